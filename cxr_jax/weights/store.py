"""Converted backbone params, stored once per (arch, source) in `paths.weights_dir()`.

`<arch>-<source>.msgpack` holds the params (flax msgpack serialization; for BatchNorm nets such as
DenseNet121 the dict {"params", "batch_stats"}, format "flax-msgpack-variables"); the JSON sidecar
`<arch>-<source>.json` records arch, source, the sha256 of the original weights file, the
preprocessing they expect, the version string and the sha256 of the msgpack file itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from flax import serialization

from cxr_jax import files, paths
from cxr_jax.weights.errors import HashMismatchError
from cxr_jax.weights.sources import file_digest


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Backbone params {block1..block5} (DenseNet: {stage1..stage5, features}), the preprocessing
  they expect, their version and, for BatchNorm nets, the running statistics (batch_stats, the
  same tree layout; merge them into the model's batch_stats like the params)."""
  params: dict[str, Any]
  preprocessing: str   # key of PREPROCESSING: "torchvision" | "caffe"
  version: str         # "<source>-<first 12 hex of the weights file's sha256>"
  batch_stats: dict[str, Any] | None = None


def version_string(source: str, sha256: str) -> str:
  return f"{source}-{sha256[:12]}"


def _stem(arch: str, source: str, root: Path | None = None) -> Path:
  return (root or paths.weights_dir()) / f"{arch}-{source}"


def save(arch: str, source: str, params: dict, *, sha256: str, preprocessing: str,
         origin: str, batch_stats: dict | None = None) -> Pretrained:
  """Stores converted `params` (and `batch_stats`); `origin` says which file/URL they came from."""
  stem = _stem(arch, source)
  stem.parent.mkdir(parents=True, exist_ok=True)
  blob_path = stem.with_suffix(".msgpack")
  blob = params if batch_stats is None else dict(params=params, batch_stats=batch_stats)
  files.write_atomic(blob_path, serialization.msgpack_serialize(blob))
  version = version_string(source, sha256)
  meta = dict(arch=arch, source=source, sha256=sha256, version=version,
              preprocessing=preprocessing, origin=origin,
              format="flax-msgpack" if batch_stats is None else "flax-msgpack-variables",
              params_file=blob_path.name, params_sha256=file_digest(blob_path, "sha256"))
  files.write_json(stem.with_suffix(".json"), meta, indent=2)
  return Pretrained(params=params, preprocessing=preprocessing, version=version,
                    batch_stats=batch_stats)


def load(arch: str, source: str) -> Pretrained | None:
  """The stored params for (arch, source), or None if not converted yet."""
  stem = _stem(arch, source)
  meta_path = stem.with_suffix(".json")
  if not meta_path.is_file():
    return None
  meta = json.loads(meta_path.read_text())
  blob_path = stem.with_name(meta["params_file"])
  if not blob_path.is_file() or file_digest(blob_path, "sha256") != meta["params_sha256"]:
    raise HashMismatchError(
        f"{blob_path}: missing or does not match its sidecar {meta_path}; delete both and run "
        f"`python -m cxr_jax.weights fetch {arch} --source {source}` again")
  blob = serialization.msgpack_restore(blob_path.read_bytes())
  params, batch_stats = ((blob["params"], blob["batch_stats"])
                         if meta.get("format") == "flax-msgpack-variables" else (blob, None))
  return Pretrained(params=params, preprocessing=meta["preprocessing"], version=meta["version"],
                    batch_stats=batch_stats)
