"""Input pipeline: batches of one split as numpy, shaped for data-parallel training.

uint8 grayscale -> (shuffle, augment when training) -> float32, replicated to 3 channels and
normalised like the backbone's pretrained weights -> [num_devices, batch / num_devices, ...].
Training batches drop the remainder; evaluation batches are padded (mask 0), never dropped.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import tensorflow as tf

# Decoded splits kept in memory between calls (one per split and dataset; a few are enough).
_SPLIT_CACHE: collections.OrderedDict = collections.OrderedDict()
_SPLIT_CACHE_SIZE = 4
_MAX_SHIFT = 0.08  # augmentation: shifts up to 8% of the side


def preprocessing_spec(name: str) -> dict:
  """PREPROCESSING[name] from cxr_jax.weights (scale, mean, std, channel_order)."""
  from cxr_jax.weights import PREPROCESSING  # Late: the weights package imports jax.
  if name not in PREPROCESSING:
    raise ValueError(f"Unknown preprocessing {name!r}; known: {sorted(PREPROCESSING)}.")
  return PREPROCESSING[name]


def epoch_seed(seed: int, epoch: int) -> int:
  """A tf seed that depends only on (seed, epoch), so a resumed epoch repeats its order."""
  return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _split_examples(built, split_ids: np.ndarray) -> tf.data.Dataset:
  """The split's examples (image uint8, label, index) in id order, cached in memory."""
  digest = hashlib.sha1(np.ascontiguousarray(split_ids, np.int64).tobytes()).hexdigest()
  key = (built.version, digest)
  if key in _SPLIT_CACHE:
    _SPLIT_CACHE.move_to_end(key)
    return _SPLIT_CACHE[key]
  keep = np.zeros(built.num_examples, bool)
  keep[split_ids] = True
  keep = tf.constant(keep)
  shape = (built.image_size, built.image_size, 1)
  # Filter before decoding the PNGs, so other splits' images are never decoded.
  ds = built.as_dataset(decode_image=False).filter(lambda ex: tf.gather(keep, ex["id"]))
  ds = ds.map(lambda ex: dict(image=tf.ensure_shape(tf.io.decode_png(ex["image"], channels=1),
                                                    shape),
                              label=tf.cast(ex["label"], tf.int32), index=ex["id"]),
              num_parallel_calls=tf.data.AUTOTUNE).cache()
  _SPLIT_CACHE[key] = ds
  if len(_SPLIT_CACHE) > _SPLIT_CACHE_SIZE:
    _SPLIT_CACHE.popitem(last=False)
  return ds


def augment(example: dict, seed: int) -> dict:
  """Random horizontal flip and shift, a pure function of (seed, example index)."""
  image = example["image"]
  size = tf.shape(image)[0]
  pad = tf.cast(tf.cast(size, tf.float32) * _MAX_SHIFT, tf.int32)
  op_seed = tf.stack([tf.constant(seed, tf.int64), example["index"]])
  flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=shift_seed)
  return dict(example, image=image)


def _normalise(batch: dict, spec: dict) -> dict:
  """uint8 [B, H, W, 1] -> float32 [B, H, W, 3], (x * scale - mean) / std per channel."""
  image = tf.cast(batch["image"], tf.float32) * spec["scale"]
  image = tf.repeat(image, 3, axis=-1)  # Gray is the same in RGB and BGR order.
  mean = tf.constant(spec["mean"], tf.float32)
  std = tf.constant(spec["std"], tf.float32)
  return dict(batch, image=(image - mean) / std)


def normalise_images(images: np.ndarray, preprocessing: str) -> np.ndarray:
  """uint8 [N, H, W, 1] -> float32 [N, H, W, 3] exactly as training batches (for inference)."""
  return np.asarray(_normalise({"image": images}, preprocessing_spec(preprocessing))["image"])


def _pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads to batch_size with zeros, mask 0 and index -1 (an id no example has)."""
  missing = batch_size - len(batch["mask"])
  if missing == 0:
    return batch
  fill = lambda k, v: np.full((missing,) + v.shape[1:], -1 if k == "index" else 0, v.dtype)
  return {k: np.concatenate([v, fill(k, v)]) for k, v in batch.items()}


def _per_device(batch: dict, num_devices: int) -> dict:
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def make_dataset(built, split_ids, *, batch_size: int, num_devices: int, preprocessing: str,
                 train: bool, seed: int, epoch: int, data_config):
  """Yields numpy batches of the split: image float32 [D, B/D, H, W, 3], label int32,
  mask float32 (0 = padding), index int64 (example id, -1 for padding), each [D, B/D, ...].
  Arguments are checked at the call; the batches are produced lazily.

  train=True: shuffled by (seed, epoch), augmented if data_config.augment, remainder dropped.
  train=False: id order, last batch padded with mask 0.
  """
  if batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} is not divisible by num_devices={num_devices}.")
  split_ids = np.asarray(split_ids, np.int64)
  if len(np.unique(split_ids)) != len(split_ids):
    raise ValueError("split_ids has repeated ids; make_dataset takes each example once.")
  spec = preprocessing_spec(preprocessing)
  ds = _split_examples(built, split_ids)
  ds = ds.map(lambda ex: dict(ex, mask=tf.ones((), tf.float32)))
  if train:
    tf_seed = epoch_seed(seed, epoch)
    buffer = max(1, min(int(data_config.shuffle_buffer), len(split_ids)))
    ds = ds.shuffle(buffer, seed=tf_seed, reshuffle_each_iteration=False)
    if data_config.augment:
      ds = ds.map(lambda ex: augment(ex, tf_seed), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=train, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda b: _normalise(b, spec), num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = bool(data_config.deterministic)
  return _numpy_batches(ds.with_options(options).prefetch(2), batch_size, num_devices)


def _numpy_batches(ds: tf.data.Dataset, batch_size: int, num_devices: int):
  for batch in ds.as_numpy_iterator():
    yield _per_device(_pad_batch(batch, batch_size), num_devices)
