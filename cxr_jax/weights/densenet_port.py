"""Ports a torchvision `densenet121` state_dict into the `DenseNet` variables (params + batch_stats).

torchvision key                                   -> DenseNet variables
features.conv0.weight (OIHW)                      -> params/stage1/conv0/kernel (HWIO)
features.norm0.{weight, bias}                     -> params/stage1/norm0/{scale, bias}
features.norm0.{running_mean, running_var}        -> batch_stats/stage1/norm0/{mean, var}
features.denseblockB.denselayerL.{norm1, conv1, norm2, conv2}.*
                                                  -> stage{B+1}/denselayerL/{norm1, conv1, norm2, conv2}
features.transitionB.{norm, conv}.*               -> stage{B+1}/{norm, conv}
features.norm5.*                                  -> features/norm5
classifier.*, *.num_batches_tracked               ignored (the head is initialised fresh)

The published file (densenet121-a639ec97.pth) predates torchvision's current names and spells
dense layer modules 'norm.1', 'conv.1', ...; torchvision renames them on load and so does this
porter, so both spellings are accepted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.weights.errors import ShapeMismatchError

DENSENET_DEPTHS = {"densenet121": 121}
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var)$")
_BLOCK = re.compile(r"^denseblock(\d+)\.(denselayer\d+)\.(.+)$")
_TRANSITION = re.compile(r"^transition(\d+)\.(.+)$")
_BN_PARTS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def modern_key(key: str) -> str:
  """torchvision's current name for a state_dict key ('...denselayer1.norm.1.weight' -> 'norm1')."""
  m = _LEGACY.match(key)
  return f"{m.group(1)}{m.group(2)}.{m.group(3)}" if m else key


def _module_path(name: str) -> tuple[str, ...] | None:
  """Path in the DenseNet tree of the torchvision module `features.<name>`; None if unknown."""
  if name in ("conv0", "norm0"):
    return ("stage1", name)
  if name == "norm5":
    return ("features", "norm5")
  if m := _BLOCK.match(name):
    return (f"stage{int(m.group(1)) + 1}", m.group(2), m.group(3))
  if m := _TRANSITION.match(name):
    return (f"stage{int(m.group(1)) + 1}", m.group(2))
  return None


@functools.lru_cache(maxsize=2)
def expected_shapes(arch: str) -> dict[str, dict]:
  """{"params": ..., "batch_stats": ...} shapes of `arch`'s backbone and norm5 (no head)."""
  from cxr_jax.models.densenet import DenseNet

  if arch not in DENSENET_DEPTHS:
    raise ValueError(f"arch must be one of {sorted(DENSENET_DEPTHS)}, got {arch!r}")
  shapes = jax.eval_shape(DenseNet(depth=DENSENET_DEPTHS[arch]).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  return {col: {k: jax.tree.map(lambda s: tuple(s.shape), v) for k, v in shapes[col].items()
                if k != "head"} for col in ("params", "batch_stats")}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def from_torchvision_densenet(state_dict: Mapping[str, np.ndarray], arch: str,
                              what: str) -> dict[str, Any]:
  """{"params": {stage1..stage5, features}, "batch_stats": {...}} as float32 numpy arrays.

  Raises:
    ShapeMismatchError naming the key and both shapes, a key the architecture lacks, or a layer
    the file lacks.
  """
  expected = expected_shapes(arch)
  ported: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for raw_key, value in state_dict.items():
    key = modern_key(raw_key)
    if not key.startswith("features.") or key.endswith("num_batches_tracked"):
      continue  # classifier, counters
    module, _, part = key[len("features."):].rpartition(".")
    path = _module_path(module)
    is_conv = path is not None and path[-1].startswith("conv")
    col, leaf = ("params", "kernel") if is_conv and part == "weight" else _BN_PARTS.get(
        part, (None, None))
    want = None if path is None or col is None else _get(expected[col], path + (leaf,))
    if want is None or (is_conv and part != "weight"):
      raise ShapeMismatchError(f"{what}: {raw_key} has no place in {arch}: not a torchvision "
                               f"{arch} state_dict")
    value = np.asarray(value, np.float32)
    if is_conv and value.ndim == 4:
      value = np.transpose(value, (2, 3, 1, 0))
    if tuple(value.shape) != want:
      raise ShapeMismatchError(f"{what}: {raw_key}: {arch} needs {col}/{'/'.join(path)}/{leaf} of "
                               f"shape {want} but the file has {tuple(value.shape)} (kernels "
                               "compared as HWIO)")
    _set(ported[col], path + (leaf,), value)
  for col in ("params", "batch_stats"):
    missing = [p for p, _ in _leaves(expected[col]) if _get(ported[col], p) is None]
    if missing:
      raise ShapeMismatchError(f"{what}: {len(missing)} {arch} {col} entries are missing from the "
                               f"file, e.g. {'/'.join(missing[0])}: not a torchvision {arch} "
                               "state_dict")
  return ported
