"""The binary per-user state: named arrays <-> bytes with a small versioned header. Never pickle.

Blob layout (all little-endian):

    offset 0   4s   magic b"CMNS"
           4   u16  codec version (CODEC_VERSION)
           6   u16  length V of the model version string
           8   u32  payload length in bytes
          12   u32  crc32 of the payload
          16   i64  pos: events absorbed (a copy of the `pos` field, readable for any model version)
          24   V    model version, ASCII, zero-padded to a multiple of 8 bytes
    payload        each state field at its declared byte offset (8-byte aligned), C order

The field list is model/state.py's `state_fields(config)`: the same names as the PyTorch state and
the ONNX graph inputs/outputs. Numpy only (no torch): the serving side imports it.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

MAGIC = b"CMNS"
CODEC_VERSION = 1
ALIGN = 8  # every field and the payload start on an 8-byte boundary
HEADER = struct.Struct("<4sHHIIq")  # magic, codec version, version length, payload bytes, crc32, pos
_CRC_POS = struct.Struct("<Iq")  # the crc32 and pos of HEADER, at byte 12


class StateError(ValueError):
    """A state blob that cannot be fed to this model (either subclass below)."""


class StateFormatError(StateError):
    """A blob that is not a state of this layout: truncated, corrupt, or not a CmnRec state at all."""


class StateVersionError(StateError):
    """A well-formed state made by another model version (or codec version): rebuild it, never feed it."""

    def __init__(self, expected: str, found: str, detail: str = "") -> None:
        self.expected, self.found = expected, found
        super().__init__(f"state was made by model version {found!r}, this model is {expected!r}"
                         + (f" ({detail})" if detail else ""))


class FieldLayout(NamedTuple):
    """One state field in the payload. shape has no batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "float64" or "int64"
    offset: int  # byte offset from the start of the payload
    nbytes: int


class BlobHeader(NamedTuple):
    codec_version: int
    model_version: str
    payload_bytes: int
    crc32: int
    pos: int
    payload_start: int  # byte offset of the payload in the blob


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def layout_fields(fields: Iterable[Any]) -> tuple[list[FieldLayout], int]:
    """Byte offsets for (name, shape, dtype) specs in order. Returns (layouts, payload bytes)."""
    layouts, offset = [], 0
    for spec in fields:
        shape = tuple(int(d) for d in spec.shape)
        nbytes = int(math.prod(shape)) * np.dtype(spec.dtype).itemsize
        layouts.append(FieldLayout(spec.name, shape, str(np.dtype(spec.dtype)), offset, nbytes))
        offset = _round_up(offset + nbytes)
    return layouts, offset


def read_header(blob: bytes) -> BlobHeader:
    """The header of a state blob of any model version, without decoding the payload."""
    if len(blob) < HEADER.size:
        raise StateFormatError(f"state blob too short: {len(blob)} bytes, header needs {HEADER.size}")
    magic, codec_version, version_len, payload_bytes, crc, pos = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise StateFormatError(f"not a CmnRec state blob (magic {magic!r}, expected {MAGIC!r})")
    payload_start = HEADER.size + _round_up(version_len)
    if len(blob) < payload_start:
        raise StateFormatError(f"state blob truncated inside its header ({len(blob)} bytes)")
    try:
        version = bytes(blob[HEADER.size:HEADER.size + version_len]).decode("ascii")
    except UnicodeDecodeError as err:
        raise StateFormatError("state blob has a corrupt model version string") from err
    return BlobHeader(codec_version, version, payload_bytes, crc, pos, payload_start)


class StateCodec:
    """Encodes one model version's state fields; rejects blobs of other versions.

    fields: FieldSpec-like (name, shape, dtype) in state order, or FieldLayout with explicit offsets
    (as declared in an export manifest). model_version: ASCII string stamped in every blob.
    """

    def __init__(self, fields: Sequence[Any], model_version: str) -> None:
        computed, payload = layout_fields(fields)
        if fields and all(hasattr(f, "offset") for f in fields):
            declared = [FieldLayout(f.name, tuple(f.shape), str(np.dtype(f.dtype)), int(f.offset),
                                    int(f.nbytes)) for f in fields]
            if declared != computed:
                raise ValueError("state layout: declared offsets differ from this codec's layout")
        names = [f.name for f in computed]
        if "pos" not in names or computed[names.index("pos")].shape != ():
            raise ValueError("state layout: needs a scalar int64 field 'pos'")
        version_bytes = model_version.encode("ascii")
        if len(version_bytes) > 0xFFFF:
            raise ValueError("model_version: too long")
        self.fields = computed
        self.model_version = model_version
        self.payload_bytes = payload
        self.payload_start = HEADER.size + _round_up(len(version_bytes))
        self.blob_bytes = self.payload_start + payload
        self._dtypes = {f.name: np.dtype(f.dtype).newbyteorder("<") for f in computed}
        self._version_block = version_bytes.ljust(self.payload_start - HEADER.size, b"\0")
        # Fast paths for one user: a valid blob starts with these bytes (crc32 and pos aside)
        # and each field is a slice of the payload viewed as its dtype.
        self._prefix = struct.pack("<4sHHI", MAGIC, CODEC_VERSION, len(version_bytes), payload)
        self._slices = [(f.name, self._dtypes[f.name], f.offset // self._dtypes[f.name].itemsize,
                         (f.offset + f.nbytes) // self._dtypes[f.name].itemsize, f.shape)
                        for f in computed]
        self._padding = [(f.name, self._dtypes[f.name], (1, *f.shape),
                          b"\0" * (_round_up(f.offset + f.nbytes) - f.offset - f.nbytes))
                         for f in computed]

    # -- header -------------------------------------------------------------------------------------
    def check_fast(self, blob: bytes) -> int:
        """Validate a blob for this codec; returns its header pos. Same errors as `check`."""
        start = self.payload_start
        if (len(blob) == self.blob_bytes and blob[:12] == self._prefix
                and blob[HEADER.size:start] == self._version_block):
            crc, pos = _CRC_POS.unpack_from(blob, 12)
            if zlib.crc32(memoryview(blob)[start:]) == crc:
                return pos
        return self.check(blob).pos  # raises the precise error

    def check(self, blob: bytes) -> BlobHeader:
        """Validate a blob for this codec: magic, versions, length, crc32. Returns its header."""
        header = read_header(blob)
        if header.codec_version != CODEC_VERSION:
            raise StateVersionError(self.model_version, header.model_version,
                                    f"codec version {header.codec_version}, expected {CODEC_VERSION}")
        if header.model_version != self.model_version:
            raise StateVersionError(self.model_version, header.model_version)
        if header.payload_bytes != self.payload_bytes or len(blob) != self.blob_bytes:
            raise StateFormatError(f"state blob has {len(blob)} bytes (payload {header.payload_bytes}),"
                                   f" expected {self.blob_bytes} (payload {self.payload_bytes})")
        if zlib.crc32(memoryview(blob)[self.payload_start:]) != header.crc32:
            raise StateFormatError("state blob is corrupt (crc32 mismatch)")
        return header

    def pos(self, blob: bytes) -> int:
        """Events absorbed, from the header only (any model version)."""
        return read_header(blob).pos

    def version(self, blob: bytes) -> str:
        """The model version that made the blob, from the header only."""
        return read_header(blob).model_version

    # -- one user ------------------------------------------------------------------------------------
    def encode(self, state: Mapping[str, Any] | tuple) -> bytes:
        """One user's state (dict or NamedTuple of arrays, no batch axis) -> blob."""
        return self.encode_batch(self._as_batch(state))[0]

    def decode(self, blob: bytes) -> dict[str, np.ndarray]:
        """blob -> {field: array without batch axis}. Arrays are read-only views into the blob."""
        return self._views(blob, ())

    def _views(self, blob: bytes, lead: tuple[int, ...],
               verified: bool = False) -> dict[str, np.ndarray]:
        """Validated read-only field views of one blob, each shaped lead + field shape."""
        pos = _CRC_POS.unpack_from(blob, 12)[1] if verified else self.check_fast(blob)
        whole: dict[np.dtype, np.ndarray] = {}
        out = {}
        for name, dtype, begin, end, shape in self._slices:
            payload = whole.get(dtype)
            if payload is None:
                payload = whole[dtype] = np.frombuffer(blob, dtype, offset=self.payload_start)
            out[name] = payload[begin:end].reshape(lead + shape)
        if int(out["pos"].reshape(())) != pos:
            raise StateFormatError("state blob is corrupt (header pos differs from the pos field)")
        return out

    # -- a batch of users ----------------------------------------------------------------------------
    def encode_batch(self, arrays: Mapping[str, Any] | tuple) -> list[bytes]:
        """{field: [B, ...] array} (or a state NamedTuple) -> B blobs."""
        arrays = self._as_mapping(arrays)
        pos = np.asarray(arrays["pos"])
        batch = pos.shape[0] if pos.ndim else 1
        if batch == 1 and pos.ndim == 1:
            return [self._encode_one(arrays)]
        buffer = np.zeros((batch, self.blob_bytes), dtype=np.uint8)
        start = self.payload_start
        for f in self.fields:
            if f.name not in arrays:
                raise ValueError(f"state: missing field {f.name!r}")
            value = np.asarray(arrays[f.name])
            if value.shape != (batch, *f.shape):
                raise ValueError(f"state field {f.name!r}: shape {value.shape},"
                                 f" expected {(batch, *f.shape)}")
            value = np.ascontiguousarray(value, dtype=self._dtypes[f.name]).reshape(batch, -1)
            buffer[:, start + f.offset:start + f.offset + f.nbytes] = value.view(np.uint8)
        buffer[:, HEADER.size:start] = np.frombuffer(self._version_block, dtype=np.uint8)
        blobs = []
        positions = pos.reshape(batch).tolist()
        for row, p in zip(buffer, positions):
            crc = zlib.crc32(row[start:])
            HEADER.pack_into(row, 0, MAGIC, CODEC_VERSION, len(self.model_version),
                             self.payload_bytes, crc, p)
            blobs.append(row.tobytes())
        return blobs

    def decode_batch(self, blobs: Sequence[bytes], *, verified: bool = False
                     ) -> dict[str, np.ndarray]:
        """B blobs -> {field: [B, ...] array}. Read-only views for B == 1, fresh arrays otherwise.

        verified: the caller has checked every blob (`check`) or made it with this codec, so the
        crc32 of each payload (about 10 us for a paper-size state) is not computed again; the
        length and the header pos are still compared.
        """
        if len(blobs) == 1:
            if verified and len(blobs[0]) != self.blob_bytes:
                self.check(blobs[0])  # raises the precise error
            return self._views(blobs[0], (1,), verified)
        if not blobs:
            raise ValueError("decode_batch: no blobs")
        if verified:
            if any(len(b) != self.blob_bytes for b in blobs):
                for b in blobs:
                    self.check(b)  # raises the precise error
            header_pos = np.array([_CRC_POS.unpack_from(b, 12)[1] for b in blobs], dtype=np.int64)
        else:
            header_pos = np.array([self.check_fast(b) for b in blobs], dtype=np.int64)
        matrix = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), self.blob_bytes)
        start = self.payload_start
        out = {}
        for f in self.fields:
            columns = matrix[:, start + f.offset:start + f.offset + f.nbytes]
            out[f.name] = np.ascontiguousarray(columns).view(self._dtypes[f.name]).reshape(
                len(blobs), *f.shape)
        if not np.array_equal(out["pos"], header_pos):
            raise StateFormatError("state blob is corrupt (header pos differs from the pos field)")
        return out

    def _encode_one(self, arrays: Mapping[str, Any]) -> bytes:
        """encode_batch for B == 1 without the [B, bytes] staging buffer."""
        parts = []
        for name, dtype, shape, padding in self._padding:
            if name not in arrays:
                raise ValueError(f"state: missing field {name!r}")
            value = np.asarray(arrays[name])
            if value.shape != shape:
                raise ValueError(f"state field {name!r}: shape {value.shape}, expected {shape}")
            parts.append(value.astype(dtype, copy=False).tobytes())
            if padding:
                parts.append(padding)
        payload = b"".join(parts)
        pos = int(np.asarray(arrays["pos"]).reshape(()))
        header = HEADER.pack(MAGIC, CODEC_VERSION, len(self.model_version), self.payload_bytes,
                             zlib.crc32(payload), pos)
        return b"".join((header, self._version_block, payload))

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _as_mapping(state: Mapping[str, Any] | tuple) -> Mapping[str, Any]:
        return state._asdict() if hasattr(state, "_asdict") else state

    def _as_batch(self, state: Mapping[str, Any] | tuple) -> dict[str, np.ndarray]:
        state = self._as_mapping(state)
        missing = [f.name for f in self.fields if f.name not in state]
        if missing:
            raise ValueError(f"state: missing fields {missing}")
        return {f.name: np.asarray(state[f.name])[None] for f in self.fields}
