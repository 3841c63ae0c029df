"""Input pipeline: batches of one split as numpy, shaped for data-parallel training.

uint8 grayscale -> (shuffle or group-balanced sampling, augment when training) -> float32,
replicated to 3 channels and normalised like the backbone's pretrained weights ->
[num_devices, batch / num_devices, ...]. Training batches drop the remainder; evaluation batches
are padded (mask 0), never dropped. Every random choice is a function of (seed, epoch, example),
so a resumed epoch repeats its batches bit for bit.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import tensorflow as tf

from cxr_jax.data.augment import acquire
from cxr_jax.data.preprocess import normalise_images, preprocessing_spec
from cxr_jax.data.records import LABELS

# Decoded splits kept in memory between calls (one per split and dataset; a few are enough).
_SPLIT_CACHE: collections.OrderedDict = collections.OrderedDict()
_SPLIT_CACHE_SIZE = 4
_MAX_SHIFT = 0.08  # augmentation: shifts up to 8% of the side
# Stream tags, so acquisition draws and the cell sequence never share a seed with flip/shift.
_ACQUISITION, _GROUPS, _FLIP = 1, 2, 3


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


def augment(example: dict, seed) -> dict:
  """Random horizontal flip and shift, a pure function of (seed, example index)."""
  image = example["image"]
  size = tf.shape(image)[0]
  pad = tf.cast(tf.cast(size, tf.float32) * _MAX_SHIFT, tf.int32)
  op_seed = tf.stack([tf.cast(seed, tf.int64), example["index"]])
  flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=shift_seed)
  return dict(example, image=image)


def acquisition_key(seed: int, index, draw) -> tf.Tensor:
  """The stateless key of an example's acquisition augmentation: (epoch seed, example id, draw),
  draw telling apart repeats of one example within an epoch (group-balanced sampling)."""
  key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
  key = tf.random.experimental.stateless_fold_in(key, _ACQUISITION)
  return tf.random.experimental.stateless_fold_in(key, tf.cast(draw, tf.int64))


def _draw_seed(seed: int, draw, stream: int) -> tf.Tensor:
  """A scalar seed for one draw of an epoch (distinct per draw and stream)."""
  key = tf.stack([tf.constant(seed, tf.int64), tf.cast(draw, tf.int64)])
  return tf.random.experimental.stateless_fold_in(key, stream)[0]


def _augmented(ds: tf.data.Dataset, data_config, seed: int, repeats: bool) -> tf.data.Dataset:
  """Acquisition augmentation (data.acquisition), then flip/shift (data.augment)."""
  acquisition = bool(data_config.get("acquisition", False))
  if not (acquisition or data_config.augment):
    return ds
  strength = float(data_config.get("acquisition_strength", 1.0))
  if acquisition and not strength > 0:
    raise ValueError(f"data.acquisition_strength={strength} must be > 0.")

  def one(position, ex):
    # Without repeats the draw is 0: a pure function of (seed, epoch, example id). With them
    # (group balance) the position in the epoch tells an example's copies apart.
    draw = position if repeats else tf.zeros((), tf.int64)
    if acquisition:
      ex = dict(ex, image=acquire(ex["image"], acquisition_key(seed, ex["index"], draw), strength))
    if data_config.augment:
      ex = augment(ex, _draw_seed(seed, draw, _FLIP) if repeats else seed)
    return ex

  return ds.enumerate().map(one, num_parallel_calls=tf.data.AUTOTUNE)


def example_cells(metadata, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(cell names "source/label", each id's cell index) over the (source, label) pairs of ids."""
  source = np.asarray(metadata["source"])[ids]
  label = np.asarray(metadata["label"])[ids]
  keys = np.array([f"{s}/{LABELS[int(y)] if 0 <= y < len(LABELS) else y}"
                   for s, y in zip(source, label, strict=True)])
  names, cell = np.unique(keys, return_inverse=True)
  return names, cell.astype(np.int64)


def cell_sequence(num_cells: int, length: int, seed: int, epoch: int) -> np.ndarray:
  """Which cell each of an epoch's `length` draws comes from: every cell floor or ceil of
  length / num_cells times (which ones get the extra draw is random), in random order."""
  rng = np.random.default_rng([int(seed), int(epoch), _GROUPS])
  counts = np.full(num_cells, length // num_cells)
  counts[rng.permutation(num_cells)[:length % num_cells]] += 1
  return rng.permutation(np.repeat(np.arange(num_cells, dtype=np.int64), counts))


def _group_balanced(ds: tf.data.Dataset, built, split_ids: np.ndarray, seed: int, epoch: int):
  """The epoch's examples drawn cell by cell (Sagawa et al. 2020's group-balanced sampling).

  The cell order is cell_sequence; within a cell the examples come in random order, reshuffled
  each time the cell is used up (so each example of a cell is drawn about equally often, and
  small cells repeat), a pure function of (seed, epoch)."""
  if len(split_ids) == 0:
    return ds
  _, cell = example_cells(built.metadata, split_ids)
  table = np.full(built.num_examples, -1, np.int64)
  table[split_ids] = cell
  table = tf.constant(table)
  tf_seed = epoch_seed(seed, epoch)
  cells = []
  for c in range(int(cell.max()) + 1):
    size = int(np.sum(cell == c))
    # cache() then a full-size shuffle buffer: the first pass reads the whole cell into the
    # cache before anything is emitted, so later passes never scan the split again.
    member = ds.filter(lambda ex, c=c: tf.gather(table, ex["index"]) == c).cache()
    cells.append(member.shuffle(size, seed=tf_seed + c + 1, reshuffle_each_iteration=True).repeat())
  choice = tf.data.Dataset.from_tensor_slices(
      cell_sequence(len(cells), len(split_ids), seed, epoch))
  return tf.data.Dataset.choose_from_datasets(cells, choice)


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

  train=True: shuffled by (seed, epoch), or with data_config.group_balance drawn equally often
  from every (source, label) cell of split_ids (len(split_ids) draws, repeats allowed);
  augmented if data_config.acquisition / data_config.augment; remainder dropped.
  train=False: id order, last batch padded with mask 0.
  """
  if batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} is not divisible by num_devices={num_devices}.")
  split_ids = np.asarray(split_ids, np.int64)
  if len(np.unique(split_ids)) != len(split_ids):
    raise ValueError("split_ids has repeated ids; make_dataset takes each example once.")
  preprocessing_spec(preprocessing)   # an unknown name fails here, at the call
  ds = _split_examples(built, split_ids)
  ds = ds.map(lambda ex: dict(ex, mask=tf.ones((), tf.float32)))
  if train:
    tf_seed = epoch_seed(seed, epoch)
    balanced = bool(data_config.get("group_balance", False))
    if balanced:
      ds = _group_balanced(ds, built, split_ids, seed, epoch)
    else:
      buffer = max(1, min(int(data_config.shuffle_buffer), len(split_ids)))
      ds = ds.shuffle(buffer, seed=tf_seed, reshuffle_each_iteration=False)
    ds = _augmented(ds, data_config, tf_seed, repeats=balanced)
  ds = ds.batch(batch_size, drop_remainder=train, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = bool(data_config.deterministic)
  return _numpy_batches(ds.with_options(options).prefetch(2), batch_size, num_devices,
                        preprocessing)


def _numpy_batches(ds: tf.data.Dataset, batch_size: int, num_devices: int, preprocessing: str):
  for batch in ds.as_numpy_iterator():
    batch["image"] = normalise_images(batch["image"], preprocessing)
    yield _per_device(_pad_batch(batch, batch_size), num_devices)
