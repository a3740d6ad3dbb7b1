"""The export artifact's manifest.json: everything the serving engine needs besides the ONNX graphs.

An artifact directory holds manifest.json and the graph files it names. The model version is a
content hash: sha256 over the manifest (without the version itself) and the graph files' bytes, so
two exports of the same weights get the same version and any change gets a new one. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.dataset import ItemVocab
from model.codec import CODEC_VERSION, FieldLayout
from model.config import ModelConfig

MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = "cmnrec-artifact"
ARTIFACT_FORMAT_VERSION = 1
NEXT_PREFIX = "next_"  # a graph output `next_<field>` is the new value of state field <field>
VERSION_HEX_CHARS = 16


class ArtifactError(Exception):
    """A missing, incomplete or malformed export artifact."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the step: its file and its input/output names (state field names,
    `items`, `next_<field>` or `scores`)."""

    file: str
    inputs: list[str]
    outputs: list[str]

    @property
    def output_fields(self) -> list[str | None]:
        """The state field each output updates (None for a non-state output such as scores)."""
        return [o[len(NEXT_PREFIX):] if o.startswith(NEXT_PREFIX) else None for o in self.outputs]


@dataclass(frozen=True)
class StateFieldSpec:
    """One state field in the blob payload, plus the value every element starts at."""

    name: str
    shape: tuple[int, ...]  # without the batch axis
    dtype: str
    offset: int  # bytes from the start of the payload
    nbytes: int
    initial: float  # a fresh user's state holds this value everywhere in the field

    def layout(self) -> FieldLayout:
        return FieldLayout(self.name, self.shape, self.dtype, self.offset, self.nbytes)


@dataclass(frozen=True)
class Manifest:
    """The content of manifest.json (see model/export.py for how each part is made)."""

    model_version: str  # content hash, first VERSION_HEX_CHARS hex chars of the sha256
    config: ModelConfig
    chunk_times: tuple[int, ...]  # 1-based block positions q that are chunk times
    chunk_mask: tuple[bool, ...]  # [T]: entry q-1 is True iff q is a chunk time
    state_fields: list[StateFieldSpec]
    state_payload_bytes: int
    codec_version: int
    vocab: ItemVocab
    item_counts: list[int]  # [I] training interactions per internal id
    popularity_scores: list[float]  # [I] log1p(count): cold-start scores (index 0 is padding)
    popularity_ranking: list[int]  # internal ids by popularity, most popular first, no padding
    graphs: dict[str, GraphSpec]  # "controller", "output" and, for memory models, "memory"
    opset: int
    source: dict[str, Any] = field(default_factory=dict)  # run name, training settings, versions

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self, with_version: bool = True) -> dict[str, Any]:
        data = {
            "format": ARTIFACT_FORMAT,
            "format_version": ARTIFACT_FORMAT_VERSION,
            "model_version": self.model_version,
            "config": self.config.to_dict(),
            "schedule": {"rule": self.config.rule, "block_len": self.config.block_len,
                         "slots": self.config.slots, "chunk_times": list(self.chunk_times),
                         "chunk_mask": list(self.chunk_mask)},
            "state": {"codec_version": self.codec_version,
                      "payload_bytes": self.state_payload_bytes,
                      "fields": [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype,
                                  "offset": f.offset, "nbytes": f.nbytes, "initial": f.initial}
                                 for f in self.state_fields]},
            "vocab": self.vocab.to_dict(),
            "popularity": {"item_counts": list(self.item_counts),
                           "scores": list(self.popularity_scores),
                           "ranking": list(self.popularity_ranking)},
            "graphs": {name: {"file": g.file, "inputs": list(g.inputs), "outputs": list(g.outputs)}
                       for name, g in self.graphs.items()},
            "opset": self.opset,
            "source": self.source,
        }
        if not with_version:
            del data["model_version"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"manifest: format is {data.get('format')!r}, expected"
                                f" {ARTIFACT_FORMAT!r}")
        if data.get("format_version") != ARTIFACT_FORMAT_VERSION:
            raise ArtifactError(f"manifest: format_version {data.get('format_version')!r} is not"
                                f" supported (expected {ARTIFACT_FORMAT_VERSION}); re-export the run")
        try:
            schedule, state, popularity = data["schedule"], data["state"], data["popularity"]
            return cls(
                model_version=str(data["model_version"]),
                config=ModelConfig.from_dict(data["config"]),
                chunk_times=tuple(int(q) for q in schedule["chunk_times"]),
                chunk_mask=tuple(bool(b) for b in schedule["chunk_mask"]),
                state_fields=[StateFieldSpec(f["name"], tuple(int(d) for d in f["shape"]),
                                             str(f["dtype"]), int(f["offset"]), int(f["nbytes"]),
                                             float(f["initial"])) for f in state["fields"]],
                state_payload_bytes=int(state["payload_bytes"]),
                codec_version=int(state["codec_version"]),
                vocab=ItemVocab.from_dict(data["vocab"]),
                item_counts=[int(c) for c in popularity["item_counts"]],
                popularity_scores=[float(s) for s in popularity["scores"]],
                popularity_ranking=[int(i) for i in popularity["ranking"]],
                graphs={name: GraphSpec(str(g["file"]), [str(n) for n in g["inputs"]],
                                        [str(n) for n in g["outputs"]])
                        for name, g in data["graphs"].items()},
                opset=int(data["opset"]),
                source=dict(data.get("source") or {}),
            )
        except KeyError as err:
            raise ArtifactError(f"manifest: missing field {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"manifest: malformed content: {err}") from err

    def save(self, artifact_dir: str | Path) -> Path:
        path = Path(artifact_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, artifact_dir: str | Path, verify: bool = True) -> "Manifest":
        """Read an artifact's manifest; with verify, also check the graph files and the hash."""
        artifact_dir = Path(artifact_dir)
        path = artifact_dir / MANIFEST_FILE
        if not artifact_dir.is_dir():
            raise ArtifactError(f"artifact: {artifact_dir} is not a directory (run `cmnrec export`)")
        if not path.is_file():
            raise ArtifactError(f"artifact: no {MANIFEST_FILE} in {artifact_dir}"
                                " (not an exported model; run `cmnrec export`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ArtifactError(f"artifact: {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ArtifactError(f"artifact: {path} does not hold a JSON object")
        manifest = cls.from_dict(data)
        manifest.validate()
        if verify:
            found = content_hash(manifest.to_dict(with_version=False),
                                 graph_bytes(artifact_dir, manifest.graphs))
            if found != manifest.model_version:
                raise ArtifactError(f"artifact: content hash {found} differs from the manifest's"
                                    f" model_version {manifest.model_version} (modified or corrupt)")
        return manifest

    def validate(self) -> None:
        """Internal consistency: vocabulary and popularity sizes, schedule, graphs present."""
        c = self.config
        if len(self.vocab) != c.num_items:
            raise ArtifactError(f"manifest: vocab has {len(self.vocab)} ids, config.num_items is"
                                f" {c.num_items}")
        for name, values in (("item_counts", self.item_counts),
                             ("popularity scores", self.popularity_scores)):
            if len(values) != c.num_items:
                raise ArtifactError(f"manifest: {name} has {len(values)} entries, expected"
                                    f" {c.num_items}")
        if len(self.chunk_mask) != c.block_len:
            raise ArtifactError(f"manifest: chunk_mask has {len(self.chunk_mask)} entries,"
                                f" block_len is {c.block_len}")
        needed = {"controller", "output"} | ({"memory"} if c.has_memory else set())
        if not needed <= set(self.graphs):
            raise ArtifactError(f"manifest: graphs {sorted(needed - set(self.graphs))} missing")
        if self.codec_version != CODEC_VERSION:
            raise ArtifactError(f"manifest: state codec version {self.codec_version}, this"
                                f" engine reads {CODEC_VERSION}; re-export the run")


def graph_bytes(artifact_dir: str | Path, graphs: dict[str, GraphSpec]) -> dict[str, bytes]:
    """{file name: bytes} of the graph files; ArtifactError if one is missing."""
    out = {}
    for spec in graphs.values():
        path = Path(artifact_dir) / spec.file
        if not path.is_file():
            raise ArtifactError(f"artifact: graph file {spec.file} missing in {artifact_dir}")
        out[spec.file] = path.read_bytes()
    return out


def content_hash(manifest_without_version: dict[str, Any], graphs: dict[str, bytes]) -> str:
    """Model version: sha256 over the canonical manifest JSON and each graph file (by name)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(manifest_without_version, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=True).encode("ascii"))
    for name in sorted(graphs):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(len(graphs[name]).to_bytes(8, "little"))
        digest.update(graphs[name])
    return digest.hexdigest()[:VERSION_HEX_CHARS]
