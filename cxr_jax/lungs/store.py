"""Trained lung segmenters, stored like the backbone weights in `paths.weights_dir()/lungs/`.

`unet-<version>.msgpack` (flax msgpack params) and `unet-<version>.json` (recipe, data digest,
encoder weights, training history and time, machine, params sha256). The version is a hash of
the recipe, the annotation set's content, the encoder's ImageNet weights and CODE_VERSION: the
same inputs reuse the stored model, any change trains a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from flax import serialization

from cxr_jax import files, machine, paths
from cxr_jax.lungs.recipe import Recipe
from cxr_jax.weights.errors import HashMismatchError
from cxr_jax.weights.sources import file_digest

# Bump when training or the model changes what a recipe produces.
CODE_VERSION = 1


def root() -> Path:
  return paths.weights_dir() / "lungs"


def version(recipe: Recipe, data_digest: str, encoder_weights: str) -> str:
  key = json.dumps(dict(recipe=recipe.to_json(), data=data_digest, encoder=encoder_weights,
                        code=CODE_VERSION), sort_keys=True)
  return hashlib.sha256(key.encode()).hexdigest()[:12]


def _stem(name: str) -> Path:
  return root() / f"unet-{name}"


def save(name: str, params: dict, meta: dict) -> Path:
  stem = _stem(name)
  stem.parent.mkdir(parents=True, exist_ok=True)
  blob = stem.with_suffix(".msgpack")
  files.write_atomic(blob, serialization.msgpack_serialize(params))
  meta = dict(meta, version=name, params_file=blob.name,
              params_sha256=file_digest(blob, "sha256"), machine=machine.describe())
  files.write_json(stem.with_suffix(".json"), meta, indent=2)
  return stem.with_suffix(".json")


def load(name: str) -> tuple[dict, dict] | None:
  """(params, meta) of stored version `name`, or None when not stored."""
  meta_path = _stem(name).with_suffix(".json")
  if not meta_path.is_file():
    return None
  meta = json.loads(meta_path.read_text())
  blob = meta_path.with_name(meta["params_file"])
  if not blob.is_file() or file_digest(blob, "sha256") != meta["params_sha256"]:
    raise HashMismatchError(f"{blob}: missing or does not match {meta_path}; delete both and run "
                            "`python -m cxr_jax.lungs train` again")
  return serialization.msgpack_restore(blob.read_bytes()), meta


def find(recipe: Recipe) -> str | None:
  """The newest stored version trained with `recipe` (any data), for machines without the
  annotation set; None if there is none."""
  candidates = []
  for meta_path in root().glob("unet-*.json"):
    meta = json.loads(meta_path.read_text())
    if meta.get("recipe") == json.loads(json.dumps(recipe.to_json())):
      candidates.append((meta_path.stat().st_mtime, meta["version"]))
  if not candidates:
    return None
  name = max(candidates)[1]
  logging.warning("lung annotation set not found: using stored lung model %s of the same recipe",
                  name)
  return name
