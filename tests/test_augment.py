"""Acquisition augmentation and group-balanced sampling, on real cxr3 images at 48 px."""

import collections

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from cxr_jax import data
from cxr_jax.data import augment as A
from cxr_jax.data import pipeline
from tests.test_data import cxr3_config

SIZE = 48
PER_CELL = 60  # first 60 images of each (source, label) cell: big cells of 60, small of 1-28


@pytest.fixture(scope="module")
def small(cxr3_root, tmp_path_factory, subset_manifest):
  """(built dataset at 48 px of a real subset, its config) with every cell of cxr3."""
  tmp = tmp_path_factory.mktemp("cells")
  folder, _ = subset_manifest(cxr3_root / "manifest.csv", tmp / "cxr3-cells", PER_CELL)
  cfg = cxr3_config(folder, tmp / "tfds", image_size=SIZE)
  return data.build_dataset(cfg), cfg


@pytest.fixture(scope="module")
def images(small):
  """8 real uint8 [48, 48, 1] images and their ids."""
  built, _ = small
  exs = list(built.as_dataset().take(8).as_numpy_iterator())
  return [tf.constant(ex["image"]) for ex in exs], [int(ex["id"]) for ex in exs]


@pytest.fixture(scope="module")
def train_ids(small):
  built, cfg = small
  return data.make_splits(built.metadata, cfg)["train"]


def key(seed, epoch, index, draw=0):
  return pipeline.acquisition_key(pipeline.epoch_seed(seed, epoch), tf.constant(index, tf.int64),
                                  draw)


def as_float(image):
  return tf.cast(image, tf.float32)


def high_frequency(x) -> float:
  """Mean squared Laplacian: the energy a blur removes and sharpening adds."""
  x = np.asarray(x, np.float64)[..., 0]
  lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
  return float(np.mean(lap ** 2))


# ------------------------------------------------------------------ acquire: keys, shape, range


def test_acquire_is_a_pure_function_of_seed_epoch_example(images):
  imgs, ids = images
  for image, i in zip(imgs, ids, strict=True):
    a = A.acquire(image, key(0, 3, i)).numpy()
    np.testing.assert_array_equal(a, A.acquire(image, key(0, 3, i)).numpy())
    assert not np.array_equal(a, A.acquire(image, key(0, 4, i)).numpy())   # another epoch
    assert not np.array_equal(a, A.acquire(image, key(1, 3, i)).numpy())   # another seed
    assert not np.array_equal(a, A.acquire(image, key(0, 3, i, draw=1)).numpy())  # a repeat
  # The same key on another example's id draws other parameters.
  assert not np.array_equal(A.acquire(imgs[0], key(0, 3, ids[0])).numpy(),
                            A.acquire(imgs[0], key(0, 3, ids[1])).numpy())


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_acquire_keeps_shape_dtype_range_and_the_image(images, strength):
  imgs, ids = images
  changed = 0
  for epoch in range(4):
    for image, i in zip(imgs, ids, strict=True):
      out = A.acquire(image, key(0, epoch, i), strength)
      assert out.shape == image.shape and out.dtype == tf.uint8  # uint8: 0..255 by type
      x, y = np.asarray(image, np.float64).ravel(), np.asarray(out, np.float64).ravel()
      changed += not np.array_equal(x, y)
      # Still the same radiograph: correlated pixel for pixel despite crop and rotation (0.66 is
      # the least of these 32 at strength 1), mean grey level kept roughly.
      assert np.corrcoef(x, y)[0, 1] > (0.5 if strength <= 1 else 0.25)
      assert abs(x.mean() - y.mean()) < 40 * strength
  assert changed >= 30  # of 32; no op at all has probability 0.5 ** 9


# ------------------------------------------------------------------ each op does what it says


def test_warp_identity_crop_and_rotation(images):
  image = as_float(images[0][0])
  shape = tf.shape(image)
  np.testing.assert_array_equal(A.warp(image, tf.eye(3)), image)
  # Crop of 0.8 x 0.8 at the top left, resized: a horizontal ramp x becomes 0.8 (x + 0.5) - 0.5.
  ramp = tf.tile(tf.range(SIZE, dtype=tf.float32)[None, :, None], [SIZE, 1, 1])
  out = A.warp(ramp, A.crop_matrix(shape, 0.64, 1.0, tf.zeros(2)))
  x = np.arange(1, SIZE)
  np.testing.assert_allclose(out[SIZE // 2, 1:, 0], 0.8 * (x + 0.5) - 0.5, atol=1e-3)
  # A vertical line through the centre, rotated by 7 degrees, leans by 47 * tan(7 deg) px.
  line = np.zeros((SIZE, SIZE, 1), np.float32)
  line[:, SIZE // 2] = 255
  out = A.warp(tf.constant(line), A.rotation_matrix(shape, 7.0)).numpy()[..., 0]
  centre = lambda row: np.sum(out[row] * np.arange(SIZE)) / np.sum(out[row])
  lean = abs(centre(SIZE - 1) - centre(0))
  assert lean == pytest.approx((SIZE - 1) * np.tan(np.radians(7)), abs=0.5)
  # Every pixel stays in the image (reflected borders: no black corners).
  rotated = A.warp(tf.fill([SIZE, SIZE, 1], 200.0), A.rotation_matrix(shape, 7.0))
  np.testing.assert_allclose(rotated, 200.0, atol=1e-3)


def test_resample_blur_and_sharpen_change_fine_detail_only(images):
  image = as_float(images[0][0])
  flat = tf.fill([SIZE, SIZE, 1], 90.0)
  base = high_frequency(image)
  assert high_frequency(A.resample(image, 0.5)) < 0.5 * base
  assert high_frequency(A.blur(image, 1.2)) < 0.5 * base
  assert high_frequency(A.sharpen(image, 1.0)) > 1.5 * base
  for out in (A.resample(image, 0.5), A.blur(image, 1.2), A.sharpen(image, 1.0)):
    assert out.shape == image.shape
    assert float(tf.reduce_mean(out)) == pytest.approx(float(tf.reduce_mean(image)), abs=2.0)
  for op in (lambda x: A.resample(x, 0.6), lambda x: A.blur(x, 1.0), lambda x: A.sharpen(x, 1.0)):
    np.testing.assert_allclose(op(flat), flat, atol=1e-3)   # nothing to blur: no dark borders


def test_noise_has_the_requested_std():
  flat = tf.fill([SIZE * 4, SIZE * 4, 1], 128.0)
  noisy = A.add_noise(flat, 6.0, tf.constant([1, 2], tf.int64))
  assert float(tf.math.reduce_std(noisy)) == pytest.approx(6.0, rel=0.05)
  assert float(tf.reduce_mean(noisy)) == pytest.approx(128.0, abs=0.5)


def test_gamma_contrast_brightness(images):
  image = as_float(images[0][0])
  mean, std = float(tf.reduce_mean(image)), float(tf.math.reduce_std(image))
  same = A.adjust_intensity(image, 1.0, 1.0, 0.0)
  np.testing.assert_allclose(same, image, atol=1e-3)
  assert float(tf.reduce_mean(A.adjust_intensity(image, 0.8, 1.0, 0.0))) > mean + 5   # brighter
  assert float(tf.reduce_mean(A.adjust_intensity(image, 1.25, 1.0, 0.0))) < mean - 5  # darker
  contrast = A.adjust_intensity(image, 1.0, 1.2, 0.0)
  assert float(tf.math.reduce_std(contrast)) == pytest.approx(1.2 * std, rel=1e-3)
  assert float(tf.reduce_mean(contrast)) == pytest.approx(mean, abs=1e-2)
  brighter = A.adjust_intensity(image, 1.0, 1.0, 10.0)
  assert float(tf.reduce_mean(brighter)) == pytest.approx(mean + 10, abs=1e-2)


def test_jpeg_is_lossy_by_quality_and_deterministic(images):
  image = as_float(images[0][0])
  error = lambda q: float(tf.reduce_mean(tf.square(A.jpeg(image, tf.constant(q)) - image)))
  assert 0 < error(95) < error(30) < 200  # PSNR above 25 dB at quality 30 (48 px)
  np.testing.assert_array_equal(A.jpeg(image, tf.constant(30)), A.jpeg(image, tf.constant(30)))


# ------------------------------------------------------------------ pipeline: resume invariant


def epoch_batches(built, ids, cfg, *, epoch=0, seed=0, batch_size=8):
  return list(data.make_dataset(built, ids, batch_size=batch_size, num_devices=2,
                                preprocessing="torchvision", train=True, seed=seed, epoch=epoch,
                                data_config=cfg))


def stacked(batches, key):
  return np.concatenate([b[key].reshape((-1,) + b[key].shape[2:]) for b in batches])


@pytest.mark.parametrize("group_balance", [False, True])
def test_acquisition_batches_repeat_bitwise_for_the_same_epoch(small, train_ids, group_balance):
  built, cfg = small
  ids = train_ids[:64]
  plain = cfg.copy_and_resolve_references()
  plain.group_balance = group_balance
  acq = plain.copy_and_resolve_references()
  acq.acquisition = acq.augment = True  # both, in the order the trainer gets them
  first, again = epoch_batches(built, ids, acq, epoch=2), epoch_batches(built, ids, acq, epoch=2)
  assert len(first) == len(again) == len(ids) // 8
  for a, b in zip(first, again, strict=True):   # a resumed epoch: the same batches, bit for bit
    assert a.keys() == b.keys() == {"image", "label", "mask", "index"}
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Same order as without augmentation, other pixels; another epoch, other pixels again.
  unaugmented = epoch_batches(built, ids, plain, epoch=2)
  np.testing.assert_array_equal(stacked(first, "index"), stacked(unaugmented, "index"))
  assert not np.array_equal(stacked(first, "image"), stacked(unaugmented, "image"))
  assert not np.array_equal(stacked(first, "image"), stacked(epoch_batches(built, ids, acq, epoch=3), "image"))


@pytest.mark.parametrize("field", ["acquisition", "augment"])
def test_repeats_of_an_example_get_their_own_augmentation(small, train_ids, field):
  built, cfg = small
  cfg = cfg.copy_and_resolve_references()
  cfg.group_balance = True
  cfg[field] = True
  batches = epoch_batches(built, train_ids, cfg)
  index, images = stacked(batches, "index"), stacked(batches, "image")
  repeated = [i for i, n in collections.Counter(index.tolist()).items() if n > 1]
  assert repeated  # small cells repeat under group balance
  differ = [not np.array_equal(*images[index == i][:2]) for i in repeated[:8]]
  assert sum(differ) >= 7  # flip and shift coincide by chance for about 1 pair in 100


def test_acquisition_strength_must_be_positive(small, train_ids):
  built, cfg = small
  cfg = cfg.copy_and_resolve_references()
  cfg.acquisition, cfg.acquisition_strength = True, 0.0
  with pytest.raises(ValueError, match="acquisition_strength"):
    epoch_batches(built, train_ids, cfg)


# ------------------------------------------------------------------ group-balanced sampler


def test_cell_sequence_is_exactly_balanced_and_seeded():
  seq = pipeline.cell_sequence(7, 100, seed=0, epoch=1)
  counts = np.bincount(seq, minlength=7)
  assert counts.sum() == 100 and counts.max() - counts.min() <= 1
  np.testing.assert_array_equal(seq, pipeline.cell_sequence(7, 100, seed=0, epoch=1))
  assert not np.array_equal(seq, pipeline.cell_sequence(7, 100, seed=0, epoch=2))
  assert not np.array_equal(seq, pipeline.cell_sequence(7, 100, seed=1, epoch=1))


def test_group_balanced_sampler_frequencies(small, train_ids):
  built, cfg = small
  cfg = cfg.copy_and_resolve_references()
  cfg.group_balance = True
  # Batch size 2: the whole epoch (an even number of draws) is in the batches.
  ids = train_ids[: len(train_ids) // 2 * 2]
  names, cell = pipeline.example_cells(built.metadata, ids)
  k, n = len(names), len(ids)
  cell_of = dict(zip(ids.tolist(), cell.tolist(), strict=True))
  batches = epoch_batches(built, ids, cfg, batch_size=2)
  index = stacked(batches, "index")
  assert len(index) == n                                   # epoch length unchanged
  assert set(index.tolist()) <= set(ids.tolist())          # training examples only
  np.testing.assert_array_equal(stacked(batches, "label"), built.metadata["label"][index])
  assert np.all(stacked(batches, "mask") == 1)
  sampled = np.bincount([cell_of[i] for i in index.tolist()], minlength=k)
  natural = np.bincount(cell, minlength=k)
  # Binomial tolerance: a cell's count over n independent uniform draws has mean n/k and
  # sd sqrt(n (1/k)(1 - 1/k)); 4 sd covers it with probability > 0.9999 per cell.
  tolerance = 4 * np.sqrt(n / k * (1 - 1 / k))
  assert np.all(np.abs(sampled - n / k) <= tolerance), (names, sampled)
  # Natural frequencies are far from uniform: Pearson's chi-square test against uniform draws
  # (k - 1 degrees of freedom) rejects them outright and accepts the sampled ones.
  p_uniform = lambda counts: scipy.stats.chi2.sf(np.sum((counts - n / k) ** 2 / (n / k)), k - 1)
  assert p_uniform(natural) < 1e-10 and p_uniform(sampled) > 1e-4, (names, natural, sampled)
  # The draws are stratified, tighter than binomial: every cell floor or ceil of n / k times,
  # and within a cell every example as evenly as possible (a cell is reshuffled when used up).
  assert sampled.max() - sampled.min() <= 1
  per_example = collections.Counter(index.tolist())
  for c in range(k):
    members = ids[cell == c]
    counts = [per_example.get(int(i), 0) for i in members]
    assert max(counts) - min(counts) <= 1, (names[c], counts)
  # A pure function of (seed, epoch).
  np.testing.assert_array_equal(index, stacked(epoch_batches(built, ids, cfg, batch_size=2), "index"))
  assert not np.array_equal(index, stacked(epoch_batches(built, ids, cfg, epoch=1, batch_size=2),
                                           "index"))
  assert not np.array_equal(index, stacked(epoch_batches(built, ids, cfg, seed=1, batch_size=2),
                                           "index"))
