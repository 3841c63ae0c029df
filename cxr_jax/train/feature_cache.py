"""Frozen-feature cache: compute the frozen blocks' output once, train the rest on it.

At fine-tuning degree k the first 5-k blocks are frozen (`FineTuningPlan.frozen`). Without
augmentation and mixup (both act on images before those blocks) their output for an image never
changes during training, so it is computed once per key and the trainer runs only the trainable
part (`model.apply(v, features, start=plan.boundary)`). Results equal training without the cache
up to float reassociation (the prefix runs at another batch size).

The key covers everything the features depend on: the dataset version (sources, image size,
CLAHE), the preprocessing, the architecture and the block, the conv implementation, the jax
version, the example ids and a digest of the frozen parameters themselves, so new weights or a
new size never reuse stale features. Features are stored under <cache>/features/<key>/ (or
$CXR_JAX_FEATURE_CACHE/<key>/) and read memory-mapped; a feature set larger than config.train.feature_cache_max_gb (or than the free disk)
is not cached and the run trains as usual.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data, files, ops, paths
from cxr_jax.models.plan import FineTuningPlan

_FORMAT = 1  # bump when the stored layout changes


def cache_root() -> Path:
  """Where feature sets are stored: $CXR_JAX_FEATURE_CACHE, else <cache>/features."""
  env = os.environ.get("CXR_JAX_FEATURE_CACHE")
  return Path(env).expanduser() if env else paths.cache_dir() / "features"


def unusable_reason(config, plan: FineTuningPlan) -> str | None:
  """Why the cache cannot be used for this config and its plan, or None when it can."""
  if not config.train.get("feature_cache", False):
    return "config.train.feature_cache is off"
  if config.data.get("task", "classes") != "classes":
    return "the cache serves the 3-class task only"
  # The prefix runs with params only: a backbone with BatchNorm statistics (DenseNet) is not served.
  if config.model.arch not in ("vgg16", "vgg19"):
    return f"model.arch={config.model.arch}: the cache supports VGG only"
  if plan.boundary is None:
    return f"no frozen blocks (trainable_blocks={plan.trainable_blocks})"
  if config.data.augment:
    return "data.augment changes the images every epoch"
  if config.data.get("acquisition", False):
    return "data.acquisition changes the images every epoch"
  if config.train.mixup_alpha > 0:
    return "mixup mixes images before the frozen blocks"
  if jax.process_count() > 1:
    return "several processes (each would need the whole cache)"
  return None


def params_digest(params, blocks) -> str:
  """sha256 over the frozen blocks' parameters (names, shapes, dtypes and bytes)."""
  h = hashlib.sha256()
  for block in blocks:
    leaves, _ = jax.tree_util.tree_flatten_with_path(params[block])
    for path, leaf in leaves:
      leaf = np.asarray(leaf)
      h.update(f"{block}{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
      h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def cache_key(config, plan: FineTuningPlan, params, built_version: str, preprocessing: str,
              ids: np.ndarray) -> dict:
  """Everything the cached features (the output of `plan.boundary`) depend on (its sha256 names
  the cache folder)."""
  d = config.data
  return dict(
      format=_FORMAT, dataset=built_version, image_size=int(d.image_size), clahe=bool(d.clahe),
      clahe_clip_limit=float(d.clahe_clip_limit), clahe_tile_grid=int(d.clahe_tile_grid),
      preprocessing=preprocessing, arch=config.model.arch, block=plan.boundary,
      conv_impl=ops.resolve(config.model.conv_impl), jax=jax.__version__,
      ids=hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest(),
      params=params_digest(params, plan.frozen))


def key_digest(key: dict) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class _Suffix:
  """The model from `start` on: `apply` as the model's, with start= fixed."""

  def __init__(self, model, start: str):
    self.model, self.start = model, start

  def apply(self, variables, x, **kwargs):
    return self.model.apply(variables, x, start=self.start, **kwargs)


class FeatureCache:
  """Cached outputs of the frozen blocks for a set of example ids (computed on first use)."""

  def __init__(self, block: str, ids: np.ndarray, folder: Path, compute):
    self.block, self.ids, self.folder = block, np.asarray(ids, np.int64), folder
    self._compute = compute
    self._features = None

  def suffix(self, model) -> _Suffix:
    """What the trainer's steps should apply instead of `model`."""
    return _Suffix(model, self.block)

  @property
  def features(self) -> np.ndarray:
    if self._features is None:
      self._features = load_or_compute(self.folder, self.ids, self._compute)
    return self._features

  def lookup(self, index: np.ndarray) -> np.ndarray:
    """Features of example ids `index` (any shape; -1 = padding, zeros)."""
    flat = np.asarray(index).reshape(-1)
    rows = np.clip(np.searchsorted(self.ids, flat), 0, len(self.ids) - 1)
    real = flat >= 0
    if not np.array_equal(self.ids[rows[real]], flat[real]):
      missing = sorted(set(flat[real].tolist()) - set(self.ids.tolist()))[:5]
      raise KeyError(f"example ids {missing} are not in the feature cache {self.folder} "
                     "(it holds the non-test examples)")
    out = np.asarray(self.features[rows]).copy()
    out[~real] = 0
    return out.reshape(np.shape(index) + out.shape[1:])

  def swap(self, batches):
    """The batches with `image` replaced by the cached features of their `index`."""
    for batch in batches:
      yield dict(batch, image=self.lookup(batch["index"]))


def load_or_compute(folder: Path, ids: np.ndarray, compute) -> np.ndarray:
  """The stored features of `folder`, computing and storing them first if absent."""
  path = folder / "features.npy"
  if path.is_file():
    stored_ids = np.load(folder / "ids.npy")
    if np.array_equal(stored_ids, ids):
      return np.load(path, mmap_mode="r")
    logging.warning("feature cache %s holds other ids; recomputing", folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
  try:
    compute(tmp / "features.npy")
    np.save(tmp / "ids.npy", ids)
    if folder.exists():
      shutil.rmtree(folder)
    os.replace(tmp, folder)  # atomic: a killed run never leaves half a cache behind
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return np.load(path, mmap_mode="r")


def _feature_shape(model, params, block: str, size: int) -> tuple:
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, stop=block), params, x)
  return tuple(out.shape[1:])


def _writer(model, params, block, built, ids, preprocessing, config, shape):
  """A function that writes the features of `ids` (id order) into a .npy file."""
  prefix = jax.jit(lambda p, x: model.apply({"params": p}, x, stop=block))

  def compute(path: Path):
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(ids),) + shape)
    row = 0
    for batch in data.make_dataset(
        built, ids, batch_size=int(config.train.eval_batch_size), num_devices=1,
        preprocessing=preprocessing, train=False, seed=int(config.seed), epoch=0,
        data_config=config.data):
      keep = batch["mask"].reshape(-1) > 0
      images = batch["image"].reshape((-1,) + batch["image"].shape[2:])
      feats = np.asarray(prefix(params, images))[keep]
      out[row:row + len(feats)] = feats
      row += len(feats)
    if row != len(ids):
      raise RuntimeError(f"feature cache: {row} features for {len(ids)} ids")
    out.flush()
    del out

  return compute


def for_setup(config, plan: FineTuningPlan, model, params, built, split_ids: dict,
              preprocessing: str):
  """The FeatureCache of a run, or None (logged why) when the run must train uncached."""
  reason = unusable_reason(config, plan)
  if reason is not None:
    if config.train.get("feature_cache", False):
      logging.warning("feature cache not used: %s", reason)
    return None
  # Every non-test example: the same set for every fold, fraction and balance draw, so the
  # folds of an experiment share one cache.
  ids = np.setdiff1d(np.asarray(built.metadata["id"], np.int64), split_ids["test"])
  block = plan.boundary
  shape = _feature_shape(model, params, block, int(config.data.image_size))
  size_gb = len(ids) * int(np.prod(shape)) * 4 / 2**30
  root = cache_root()
  root.mkdir(parents=True, exist_ok=True)
  free_gb = shutil.disk_usage(root).free / 2**30
  if size_gb > float(config.train.feature_cache_max_gb) or size_gb > 0.9 * free_gb:
    logging.warning("feature cache not used: %.2f GB of %s features for %d images exceeds "
                    "config.train.feature_cache_max_gb=%s or the free disk (%.1f GB)", size_gb,
                    block, len(ids), config.train.feature_cache_max_gb, free_gb)
    return None
  key = cache_key(config, plan, params, built.version, preprocessing, ids)
  folder = root / key_digest(key)
  logging.info("feature cache: %s output %s of %d images (%.2f GB) in %s", block, shape,
               len(ids), size_gb, folder)
  compute = _writer(model, params, block, built, ids, preprocessing, config, shape)
  return FeatureCache(block, ids, folder, functools.partial(_compute_and_describe, compute, key))


def _compute_and_describe(compute, key: dict, path: Path) -> None:
  compute(path)
  files.write_json(path.parent / "key.json", key, sort_keys=True)
