"""The state codec: round trips, the header, the declared little-endian layout, and bad blobs."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from model.codec import (
    CODEC_VERSION,
    HEADER,
    MAGIC,
    StateCodec,
    StateError,
    StateFormatError,
    StateVersionError,
    layout_fields,
    read_header,
)
from model.config import ModelConfig
from model.state import state_fields

CONFIG = ModelConfig(num_items=20, model="cmnrec", rule="pec", embed_dim=4, hidden_dim=6,
                     mem_width=5, read_heads=2, attn_dim=3, block_len=5, slots=3)
VERSION = "0123456789abcdef"


def random_state(rng: np.random.Generator, pos: int) -> dict[str, np.ndarray]:
    state = {}
    for f in state_fields(CONFIG):
        if f.dtype == "int64":
            state[f.name] = np.asarray(pos, dtype=np.int64)
        else:
            state[f.name] = rng.standard_normal(f.shape).astype(np.float32)
    return state


@pytest.fixture
def codec() -> StateCodec:
    return StateCodec(state_fields(CONFIG), VERSION)


def test_round_trip_one_user(codec: StateCodec) -> None:
    state = random_state(np.random.default_rng(0), pos=7)
    decoded = codec.decode(codec.encode(state))
    assert list(decoded) == [f.name for f in state_fields(CONFIG)]
    for name, value in state.items():
        assert decoded[name].shape == value.shape
        assert decoded[name].dtype == value.dtype
        np.testing.assert_array_equal(decoded[name], value)


def test_round_trip_batch_equals_one_by_one(codec: StateCodec) -> None:
    rng = np.random.default_rng(1)
    states = [random_state(rng, pos) for pos in (0, 3, 11)]
    batch = {name: np.stack([s[name] for s in states]) for name in states[0]}
    blobs = codec.encode_batch(batch)
    assert blobs == [codec.encode(s) for s in states]
    decoded = codec.decode_batch(blobs)
    for name, value in batch.items():
        np.testing.assert_array_equal(decoded[name], value)
    single = codec.decode_batch(blobs[1:2])
    for name, value in batch.items():
        np.testing.assert_array_equal(single[name], value[1:2])


def test_header_fields_and_cheap_peek(codec: StateCodec) -> None:
    blob = codec.encode(random_state(np.random.default_rng(2), pos=42))
    magic, codec_version, version_len, payload, _crc, pos = HEADER.unpack_from(blob)
    assert (magic, codec_version, version_len, pos) == (MAGIC, CODEC_VERSION, len(VERSION), 42)
    assert payload == codec.payload_bytes
    header = read_header(blob)
    assert header.model_version == VERSION and header.pos == 42
    assert header.payload_start % 8 == 0
    assert len(blob) == header.payload_start + payload
    assert codec.pos(blob) == 42 and codec.version(blob) == VERSION


def test_little_endian_layout_matches_declared_offsets(codec: StateCodec) -> None:
    state = random_state(np.random.default_rng(3), pos=9)
    blob = codec.encode(state)
    start = read_header(blob).payload_start
    end = 0
    for f in codec.fields:
        assert f.offset % 8 == 0 and f.offset >= end  # aligned, in order, no overlap
        end = f.offset + f.nbytes
        count = f.nbytes // np.dtype(f.dtype).itemsize
        code = "q" if f.dtype == "int64" else "f"
        values = struct.unpack_from(f"<{count}{code}", blob, start + f.offset)
        np.testing.assert_array_equal(np.asarray(values).reshape(f.shape), state[f.name])
    assert end <= codec.payload_bytes
    layouts, payload = layout_fields(state_fields(CONFIG))
    assert layouts == codec.fields and payload == codec.payload_bytes


def test_truncated_and_corrupt_blobs_are_refused(codec: StateCodec) -> None:
    blob = codec.encode(random_state(np.random.default_rng(4), pos=5))
    for cut in (0, 3, HEADER.size - 1, HEADER.size + 2, len(blob) - 1):
        with pytest.raises(StateFormatError):
            codec.decode(blob[:cut])
    with pytest.raises(StateFormatError):
        codec.decode(blob + b"\0")
    flipped = bytearray(blob)
    flipped[-3] ^= 0x40
    with pytest.raises(StateFormatError, match="crc32"):
        codec.decode(bytes(flipped))
    with pytest.raises(StateFormatError, match="magic"):
        codec.decode(b"XXXX" + blob[4:])
    with pytest.raises(StateFormatError):
        codec.decode(b"\x80\x04\x95" + bytes(100))  # a pickle is not a state
    with pytest.raises(StateFormatError):
        codec.decode_batch([blob, blob[:-8]])
    # header pos and payload pos must agree
    forged = bytearray(blob)
    struct.pack_into("<q", forged, 16, 6)
    with pytest.raises(StateFormatError, match="pos"):
        codec.decode(bytes(forged))


def test_other_model_version_raises_version_error(codec: StateCodec) -> None:
    other = StateCodec(state_fields(CONFIG), "ffffffffffffffff")
    blob = other.encode(random_state(np.random.default_rng(5), pos=3))
    with pytest.raises(StateVersionError) as info:
        codec.decode(blob)
    assert (info.value.expected, info.value.found) == (VERSION, "ffffffffffffffff")
    with pytest.raises(StateVersionError):
        codec.decode_batch([codec.encode(random_state(np.random.default_rng(6), 1)), blob])
    assert codec.pos(blob) == 3  # the header still reads, so the caller can rebuild
    assert isinstance(info.value, StateError) and not isinstance(info.value, StateFormatError)
    # a layout of another model (other shapes) with another version is a version error too
    small = ModelConfig(num_items=20, model="lstm4rec", hidden_dim=3)
    lstm = StateCodec(state_fields(small), "aaaaaaaaaaaaaaaa")
    lstm_blob = lstm.encode({"h": np.zeros(3, np.float32), "c": np.zeros(3, np.float32),
                             "pos": np.int64(2)})
    with pytest.raises(StateVersionError):
        codec.decode(lstm_blob)
    newer = bytearray(codec.encode(random_state(np.random.default_rng(7), 1)))
    struct.pack_into("<H", newer, 4, CODEC_VERSION + 1)
    with pytest.raises(StateVersionError, match="codec version"):
        codec.decode(bytes(newer))


def test_bad_arrays_and_layouts_are_refused(codec: StateCodec) -> None:
    state = random_state(np.random.default_rng(8), pos=1)
    with pytest.raises(ValueError, match="missing"):
        codec.encode({k: v for k, v in state.items() if k != "memory"})
    with pytest.raises(ValueError, match="shape"):
        codec.encode({**state, "usage": np.zeros(CONFIG.slots + 1, np.float32)})
    layouts, _ = layout_fields(state_fields(CONFIG))
    shifted = [f._replace(offset=f.offset + 8) for f in layouts]
    with pytest.raises(ValueError, match="offsets"):
        StateCodec(shifted, VERSION)
    assert StateCodec(layouts, VERSION).fields == layouts


def test_verified_decode_skips_the_crc_but_gives_the_same_arrays(codec: StateCodec) -> None:
    rng = np.random.default_rng(7)
    blobs = [codec.encode(random_state(rng, pos)) for pos in (0, 3, 11)]
    for batch in (blobs[:1], blobs):
        checked, trusted = codec.decode_batch(batch), codec.decode_batch(batch, verified=True)
        assert checked.keys() == trusted.keys()
        for name in checked:
            np.testing.assert_array_equal(checked[name], trusted[name])
    corrupt = bytearray(blobs[1])
    corrupt[codec.payload_start] ^= 0xFF  # a float of the first field, not pos
    with pytest.raises(StateFormatError):
        codec.decode_batch([bytes(corrupt)])  # checked: refused
    codec.decode_batch([bytes(corrupt)], verified=True)  # the caller vouched for it: not checked
    with pytest.raises(StateFormatError):  # a wrong length is refused even when vouched for
        codec.decode_batch([blobs[0], blobs[1][:-8]], verified=True)
