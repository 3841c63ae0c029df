"""Data layer on the real cxr3 set, built once per session at 32 px."""

import collections
import csv

import cv2
import numpy as np
import pytest

from configs.default import get_config
from cxr_jax import data
from cxr_jax.data import preprocess, splits
from cxr_jax.weights import PREPROCESSING

SIZE = 32


def cxr3_config(root, data_dir, **overrides):
  d = get_config().data
  d.sources = (f"manifest:{root}",)
  d.data_dir = str(data_dir)
  d.image_size = SIZE
  for key, value in overrides.items():
    setattr(d, key, value)
  return d


@pytest.fixture(scope="session")
def cxr3_data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cxr3_tfds")


@pytest.fixture(scope="session")
def built(cxr3_root, cxr3_data_dir):
  return data.build_dataset(cxr3_config(cxr3_root, cxr3_data_dir))


@pytest.fixture(scope="session")
def manifest(cxr3_root):
  with open(cxr3_root / "manifest.csv", newline="") as f:
    return {str((cxr3_root / r["file"]).resolve()): r for r in csv.DictReader(f)}


def test_counts_and_metadata_match_the_manifest(built, manifest):
  assert built.num_examples == len(manifest) == 1504
  assert not built.rejects and not built.duplicates and not built.excluded
  by_label = collections.Counter(data.LABELS[i] for i in built.metadata["label"])
  assert by_label == collections.Counter(r["label"] for r in manifest.values())
  for i in range(0, built.num_examples, 97):
    row = manifest[built.metadata["file"][i]]
    assert data.LABELS[built.metadata["label"][i]] == row["label"]
    assert built.metadata["patient_group"][i] == row["patient_group"]
    assert built.metadata["source"][i] == row["source"]
    assert built.metadata["findings"][i] == row["finding"]
    # Stored files were already resized; the original size is that of the stored file.
    assert (built.metadata["orig_height"][i], built.metadata["orig_width"][i]) == (
        int(row["height"]), int(row["width"]))
  assert built.version.startswith(f"cxr_dataset/s{SIZE}_")


def test_stored_images_are_the_preprocessing_output(built):
  config = preprocess.PreprocessConfig(SIZE)
  for ex in built.as_dataset().take(3):
    image = ex["image"].numpy()
    gray = cv2.imread(ex["file"].numpy().decode(), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(image, preprocess.preprocess(gray, config))
    assert int(ex["id"]) == built.metadata["id"][int(ex["id"])]


def test_reused_without_rebuilding(built, cxr3_root, cxr3_data_dir):
  again = data.build_dataset(cxr3_config(cxr3_root, cxr3_data_dir))
  assert again.version == built.version
  np.testing.assert_array_equal(again.metadata["patient_group"], built.metadata["patient_group"])


def test_every_fold_is_patient_disjoint_stratified_and_covers_all(built, cxr3_root):
  meta = built.metadata
  d = cxr3_config(cxr3_root, "")
  vals, tests = [], []
  for fold in range(d.num_folds):
    d.fold = fold
    s = data.make_splits(meta, d)
    splits.check_disjoint(meta, s)  # also run inside make_splits; explicit here
    groups = [set(meta["patient_group"][s[k]]) for k in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert np.array_equal(np.sort(np.concatenate(list(s.values()))), meta["id"])
    vals.append(s["val"])
    tests.append(s["test"])
    for k in ("train", "val", "test"):  # stratified: class shares close to the whole set's
      shares = np.bincount(meta["label"][s[k]], minlength=3) / len(s[k])
      np.testing.assert_allclose(shares, np.bincount(meta["label"]) / len(meta["label"]), atol=0.03)
  assert all(np.array_equal(t, tests[0]) for t in tests)
  assert abs(len(tests[0]) / len(meta["id"]) - d.test_fraction) < 0.01
  all_val = np.concatenate(vals)
  assert len(np.unique(all_val)) == len(all_val) == len(meta["id"]) - len(tests[0])


def test_splits_deterministic_from_seed(built, cxr3_root):
  d = cxr3_config(cxr3_root, "")
  a, b = data.make_splits(built.metadata, d), data.make_splits(built.metadata, d)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  d.split_seed = 7
  c = data.make_splits(built.metadata, d)
  assert not np.array_equal(a["test"], c["test"])


def test_split_disjointness_check_catches_leaks(built):
  group = built.metadata["patient_group"]
  names, counts = np.unique(group, return_counts=True)
  twin = np.flatnonzero(group == names[counts.argmax()])  # a group with several images
  with pytest.raises(AssertionError, match="Patient groups in both train and test"):
    splits.check_disjoint(built.metadata, dict(train=twin[:1], val=twin[:0], test=twin[1:]))


def test_train_fraction_keeps_nested_stratified_patient_groups(built, cxr3_root):
  meta = built.metadata
  full = data.make_splits(meta, cxr3_config(cxr3_root, ""))
  half = data.make_splits(meta, cxr3_config(cxr3_root, "", train_fraction=0.5))
  tenth = data.make_splits(meta, cxr3_config(cxr3_root, "", train_fraction=0.1))
  assert np.array_equal(half["val"], full["val"]) and np.array_equal(half["test"], full["test"])
  assert set(tenth["train"]) < set(half["train"]) < set(full["train"])
  groups_full = set(meta["patient_group"][full["train"]])
  groups_half = set(meta["patient_group"][half["train"]])
  assert abs(len(groups_half) / len(groups_full) - 0.5) < 0.02
  # Whole groups: every image of a kept group is kept.
  kept = np.isin(meta["patient_group"][full["train"]], list(groups_half))
  assert np.array_equal(np.sort(full["train"][kept]), half["train"])
  assert set(np.bincount(meta["label"][tenth["train"]], minlength=3) > 0) == {True}


def test_balance_samples_equal_counts_from_train_only(built, cxr3_root):
  meta = built.metadata
  plain = data.make_splits(meta, cxr3_config(cxr3_root, ""))
  balanced = data.make_splits(meta, cxr3_config(cxr3_root, "", balance=True))
  counts = np.bincount(meta["label"][balanced["train"]], minlength=3)
  assert len(set(counts)) == 1
  assert counts[0] == np.bincount(meta["label"][plain["train"]]).min()
  assert set(balanced["train"]) <= set(plain["train"])
  assert np.array_equal(balanced["val"], plain["val"])
  again = data.make_splits(meta, cxr3_config(cxr3_root, "", balance=True))
  assert np.array_equal(again["train"], balanced["train"])


def test_findings_splits_never_hold_a_covid_test_patient(built, cxr3_root):
  meta = built.metadata
  nih = np.flatnonzero(meta["source"] == "nih-chestxray14")
  assert len(nih) == 832
  for seed in (0, 7):
    covid = cxr3_config(cxr3_root, "", split_seed=seed)
    held_out = set(data.held_out_groups(meta, covid))
    test_ids = data.make_splits(meta, covid)["test"]
    assert held_out == set(meta["patient_group"][test_ids])
    assert held_out & set(meta["patient_group"][nih])  # NIH patients are in the COVID test split
    vals = []
    for fold in range(5):
      stage1 = cxr3_config(cxr3_root, "", fold=fold, split_seed=seed + 1)
      found = data.make_findings_splits(meta, stage1, exclude_groups=held_out)
      taken = np.concatenate(list(found.values()))
      groups = {k: set(meta["patient_group"][v]) for k, v in found.items()}
      assert not held_out & set(meta["patient_group"][taken]) and not set(taken) & set(test_ids)
      assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
                  or groups["val"] & groups["test"])
      assert sorted(taken) == [i for i in nih if meta["patient_group"][i] not in held_out]
      assert data.multi_hot(meta["findings"][found["train"]]).sum(0)[6] > 50  # Pneumonia
      vals.append(found["val"])
    assert len(np.unique(np.concatenate(vals))) == sum(len(v) for v in vals)


# ------------------------------------------------------------------ input pipeline


def batches(built, ids, cfg, **kw):
  args = dict(batch_size=8, num_devices=1, preprocessing="torchvision", train=False, seed=0,
              epoch=0, data_config=cfg)
  args.update(kw)
  return list(data.make_dataset(built, ids, **args))


@pytest.fixture(scope="session")
def val_ids(built, cxr3_root):
  return data.make_splits(built.metadata, cxr3_config(cxr3_root, ""))["val"]


@pytest.mark.parametrize("num_devices", [1, 8])
def test_eval_batches_pad_never_drop(built, cxr3_root, val_ids, num_devices):
  cfg = cxr3_config(cxr3_root, "")
  out = batches(built, val_ids, cfg, batch_size=16, num_devices=num_devices)
  assert len(out) == -(-len(val_ids) // 16)
  for b in out:
    assert b["image"].shape == (num_devices, 16 // num_devices, SIZE, SIZE, 3)
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    assert b["mask"].shape == b["label"].shape == b["index"].shape == (num_devices, 16 // num_devices)
  index = np.concatenate([b["index"].reshape(-1) for b in out])
  mask = np.concatenate([b["mask"].reshape(-1) for b in out])
  assert mask.sum() == len(val_ids) and np.all(mask[: len(val_ids)] == 1)
  assert np.all(index[mask == 0] == -1)
  np.testing.assert_array_equal(index[mask > 0], val_ids)  # id order, each once
  labels = np.concatenate([b["label"].reshape(-1) for b in out])[mask > 0]
  np.testing.assert_array_equal(labels, built.metadata["label"][val_ids])


@pytest.mark.parametrize("name", ["torchvision", "caffe"])
def test_normalisation_matches_weights_preprocessing(built, cxr3_root, val_ids, name):
  cfg = cxr3_config(cxr3_root, "")
  b = batches(built, val_ids[:8], cfg, preprocessing=name)[0]
  raw = {int(ex["id"]): ex["image"].numpy() for ex in built.as_dataset().take(int(val_ids[7]) + 1)}
  spec = PREPROCESSING[name]
  u = raw[int(b["index"][0, 0])].astype(np.float32)
  expected = (np.repeat(u, 3, -1) * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
  np.testing.assert_allclose(b["image"][0, 0], expected, rtol=1e-5, atol=1e-4)


def test_train_order_reproducible_per_epoch_and_drops_remainder(built, cxr3_root, val_ids):
  cfg = cxr3_config(cxr3_root, "")
  order = lambda **kw: np.concatenate(
      [b["index"].reshape(-1) for b in batches(built, val_ids, cfg, train=True, **kw)])
  e0, e0_again, e1 = order(epoch=0), order(epoch=0), order(epoch=1)
  assert len(e0) == len(val_ids) // 8 * 8
  np.testing.assert_array_equal(e0, e0_again)
  assert not np.array_equal(e0, e1)
  assert not np.array_equal(e0, np.sort(e0))
  assert not np.array_equal(order(epoch=0, seed=1), e0)
  with pytest.raises(ValueError, match="not divisible"):
    data.make_dataset(built, val_ids, batch_size=6, num_devices=4, preprocessing="torchvision",
                      train=True, seed=0, epoch=0, data_config=cfg)
  with pytest.raises(ValueError, match="Unknown preprocessing"):
    data.make_dataset(built, val_ids, batch_size=8, num_devices=1, preprocessing="imagenet",
                      train=True, seed=0, epoch=0, data_config=cfg)


def test_augmentation_is_deterministic_and_changes_images(built, cxr3_root, val_ids):
  plain_cfg = cxr3_config(cxr3_root, "")
  aug_cfg = cxr3_config(cxr3_root, "", augment=True)
  plain = batches(built, val_ids[:16], plain_cfg, train=True)
  aug = batches(built, val_ids[:16], aug_cfg, train=True)
  aug_again = batches(built, val_ids[:16], aug_cfg, train=True)
  for p, a, a2 in zip(plain, aug, aug_again, strict=True):
    np.testing.assert_array_equal(p["index"], a["index"])
    np.testing.assert_array_equal(a["image"], a2["image"])
  assert not np.allclose(np.stack([p["image"] for p in plain]), np.stack([a["image"] for a in aug]))


@pytest.mark.parametrize("preprocessing", ["caffe", "torchvision"])
def test_normalisation_matches_tensorflow_for_every_pixel_value(preprocessing):
  """NumPy's normalisation (training, evaluation and prediction) against the TensorFlow graph the
  input pipeline used before: bit-identical on all 256 uint8 values, hence on every image."""
  import tensorflow as tf

  from cxr_jax.data.preprocess import normalise_images, preprocessing_spec

  images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  spec = preprocessing_spec(preprocessing)
  reference = tf.repeat(tf.cast(images, tf.float32) * spec["scale"], 3, axis=-1)
  reference = (reference - tf.constant(spec["mean"], tf.float32)) / tf.constant(spec["std"],
                                                                                  tf.float32)
  out = normalise_images(images, preprocessing)
  assert out.dtype == np.float32 and out.shape == (1, 16, 16, 3)
  np.testing.assert_array_equal(out, reference.numpy())
  with pytest.raises(ValueError, match="Unknown preprocessing 'imagenet'"):
    normalise_images(images, "imagenet")
