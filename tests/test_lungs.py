"""Lung fields: mask geometry on constructed masks, the annotation reader's rejects on real files,
the U-Net's shapes and a short training on real annotated images, the store's reuse/rebuild,
and the quality-check fallback."""

import csv
import shutil
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from cxr_jax import paths
from cxr_jax.lungs import annotations, masks, segment, store, train, unet
from cxr_jax.lungs.recipe import Recipe

ROOT = paths.default_lung_masks_root()
needs_annotations = pytest.mark.skipif(not (ROOT / "manifest.csv").is_file(),
                                       reason=f"lung annotation set not at {ROOT}")
# A from-scratch U-Net at 48 px: seconds per step on 2 cores (3x3 convs never see 2x2 maps:
# the deepest level is 48 / 16 = 3 px).
TINY = Recipe(image_size=48, encoder="none", scratch_widths=(8, 8, 16, 16),
              decoder_widths=(16, 8, 8, 8), epochs=1, batch_size=4)


def two_lungs(size=64):
  mask = np.zeros((size, size), bool)
  mask[10:50, 8:26] = True      # image-left lung
  mask[12:52, 38:58] = True     # image-right lung
  return mask


def test_split_lungs_orders_by_side_and_keeps_fragments():
  mask = two_lungs()
  mask[55:57, 40:42] = True     # a fragment nearer the right lung
  left, right = masks.split_lungs(mask)
  assert left.sum() == 40 * 18 and right.sum() == 40 * 20 + 4
  assert not (left & right).any() and ((left | right) == mask).all()


def test_check_accepts_two_lungs_and_names_each_failure():
  assert masks.check(two_lungs()).ok
  assert "empty" in masks.check(np.zeros((64, 64), bool)).reason
  one = two_lungs()
  one[:, 32:] = False
  assert "one lung missing" in masks.check(one).reason
  stacked = np.zeros((64, 64), bool)
  stacked[2:20, 10:54] = True
  stacked[40:60, 10:54] = True
  assert not masks.check(stacked).ok
  big = np.ones((64, 64), bool)
  assert "large" in masks.check(big).reason


def test_crop_box_is_the_mask_box_plus_margin_clipped_to_the_image():
  mask = two_lungs()
  assert masks.box(mask) == (10, 8, 52, 58)
  # 10 % of height 42 -> 4 rows, of width 50 -> 5 columns; a margin of 1.0 is clipped to the image.
  assert masks.crop_box(mask, 0.1) == (6, 3, 56, 63)
  assert masks.crop_box(mask, 1.0) == (0, 0, 64, 64)


def test_blank_touches_exactly_the_masked_pixels():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  mask = two_lungs()
  out = masks.blank(image, mask)
  assert (out[~mask] == image[~mask]).all()
  assert (out[mask] == np.round(image.mean())).all()
  outside = masks.blank(image, ~mask)
  assert (outside[mask] == image[mask]).all()
  with pytest.raises(ValueError, match="differ in size"):
    masks.blank(image, mask[:32])


def test_lung_share_against_a_hand_computed_example():
  heat = np.zeros((1, 4, 4))
  heat[0, 0, 0], heat[0, 3, 3], heat[0, 1, 1] = 3.0, 1.0, -5.0   # negative mass is left out
  mask = np.zeros((1, 4, 4), bool)
  mask[0, :2, :2] = True                                          # holds the 3.0 (and the -5)
  share, chance = masks.lung_share(heat, mask)
  assert share[0] == pytest.approx(0.75) and chance[0] == pytest.approx(0.25)
  share, _ = masks.lung_share(np.zeros((1, 4, 4)), mask)
  assert np.isnan(share[0])


def test_dice_iou_and_box_iou():
  a = np.zeros((10, 10), bool)
  a[:, :5] = True
  b = np.zeros((10, 10), bool)
  b[:, 2:7] = True
  assert masks.dice(a, b) == pytest.approx(2 * 30 / 100)
  assert masks.iou(a, b) == pytest.approx(30 / 70)
  assert masks.box_iou((0, 0, 10, 5), (0, 2, 10, 7)) == pytest.approx(30 / 70)


def _subset(tmp_path: Path, n: int) -> tuple[Path, list[dict]]:
  """A copy of the first `n` masked rows of the annotation set (images and masks by file copy
  into tmp, so bad entries can be added beside them)."""
  with open(ROOT / "manifest.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["mask"]][:n]
  for sub in ("images", "masks"):
    (tmp_path / sub).mkdir(parents=True, exist_ok=True)
  for r in rows:
    shutil.copy(ROOT / r["image"], tmp_path / r["image"])
    shutil.copy(ROOT / r["mask"], tmp_path / r["mask"])
  return tmp_path, rows


def _write_manifest(root: Path, rows: list[dict]) -> None:
  with open(root / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


@needs_annotations
def test_reader_names_and_counts_every_bad_entry(tmp_path):
  root, rows = _subset(tmp_path, 6)
  bad = [dict(rows[0], stem=f"bad{i}", patient_id=f"p{i}") for i in range(4)]
  bad[0].update(image="images/missing.jpg")
  (root / "images" / "broken.jpg").write_bytes(b"not an image")
  bad[1].update(image="images/broken.jpg")
  small = cv2.imread(str(root / rows[1]["mask"]), cv2.IMREAD_GRAYSCALE)[:20, :20]
  cv2.imwrite(str(root / "masks" / "small.png"), small)
  bad[2].update(image=rows[1]["image"], mask="masks/small.png")
  grey = cv2.imread(str(root / rows[2]["mask"]), cv2.IMREAD_GRAYSCALE) // 2
  cv2.imwrite(str(root / "masks" / "grey.png"), grey)
  bad[3].update(image=rows[2]["image"], mask="masks/grey.png")
  _write_manifest(root, rows + bad)
  found = annotations.read(root, min_masks=6)
  reasons = dict(found.rejects)
  assert reasons[str(root / "images/missing.jpg")] == "file not found"
  assert reasons[str(root / "images/broken.jpg")] == "not a readable image"
  assert "but its image is" in reasons[str(root / "masks/small.png")]
  assert "not binary" in reasons[str(root / "masks/grey.png")]
  assert found.summary()["rejected"] == 4 and found.summary()["masks"] == 6
  with pytest.raises(annotations.AnnotationError, match="only 6 usable lung masks"):
    annotations.read(root, min_masks=7)


@needs_annotations
def test_split_never_puts_a_patient_in_two_parts():
  found = annotations.read()
  parts = annotations.split(found.examples, seed=0, test_fraction=0.2, val_fraction=0.1)
  groups = {k: {e.patient for e in v} for k, v in parts.items()}
  assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
              or groups["val"] & groups["test"])
  assert sum(map(len, parts.values())) == len(found.examples)
  masked_test = sum(e.mask is not None for e in parts["test"])
  assert 0.2 * 168 <= masked_test < 0.2 * 168 + 10


def test_unet_shapes_and_gradients_reach_only_trainable_blocks():
  recipe = TINY.replace(frozen_blocks=1)
  model = unet.create(recipe)
  params, version, _ = unet.init_params(model, recipe, jax.random.PRNGKey(0))
  assert version == ""
  x = np.random.default_rng(0).normal(size=(2, 48, 48, 3)).astype(np.float32)
  assert model.apply({"params": params}, x).shape == (2, 48, 48)
  grads = jax.grad(lambda p: train.loss_fn(model.apply({"params": p}, x),
                                           np.ones((2, 48, 48), np.float32), 1.0))(params)
  assert not np.any(grads["block1"]["conv1"]["kernel"])
  assert np.any(grads["block2"]["conv1"]["kernel"]) and np.any(grads["up1"]["conv1"]["kernel"])
  with pytest.raises(ValueError, match="divisible by 16"):
    model.apply({"params": params}, x[:, :40, :40])


@needs_annotations
def test_short_training_on_real_masks_lowers_the_loss_and_keeps_frozen_blocks():
  found = annotations.read()
  examples = [e for e in found.examples if e.mask is not None][:16]
  recipe = TINY.replace(frozen_blocks=1, learning_rate=3e-3, epochs=6)
  model = unet.create(recipe)
  params0, _, _ = unet.init_params(model, recipe, jax.random.PRNGKey(recipe.seed))
  params, info = train.train(recipe, examples, examples[:4], log=lambda m: None)
  losses = [h["loss"] for h in info["history"]]
  assert losses[-1] < 0.8 * losses[0], losses
  np.testing.assert_array_equal(params["block1"]["conv1"]["kernel"],
                                params0["block1"]["conv1"]["kernel"])


def test_augmentation_is_a_pure_function_of_seed_epoch_and_example():
  image = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
  mask = two_lungs(48).astype(np.float32)
  a = train.augment(image, mask, TINY, train.batch_rng(0, 3, 7))
  b = train.augment(image, mask, TINY, train.batch_rng(0, 3, 7))
  c = train.augment(image, mask, TINY, train.batch_rng(0, 4, 7))
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert not np.array_equal(a[0], c[0])


@needs_annotations
def test_store_reuses_a_trained_model_and_rebuilds_when_the_recipe_changes(tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_JAX_WEIGHTS", str(tmp_path / "weights"))
  root, rows = _subset(tmp_path / "ann", 24)
  _write_manifest(root, rows)
  logs = []
  first = segment.load_or_train(TINY, annotations_root=root, log=logs.append)
  assert sum("training lung segmenter" in m for m in logs) == 1
  again = segment.load_or_train(TINY, annotations_root=root, log=logs.append)
  assert sum("training lung segmenter" in m for m in logs) == 1 and again.version == first.version
  jax.tree.map(np.testing.assert_array_equal, first.params, again.params)
  other = segment.load_or_train(TINY.replace(seed=1), annotations_root=root, log=logs.append)
  assert other.version != first.version
  assert sum("training lung segmenter" in m for m in logs) == 2
  assert len(list(store.root().glob("unet-*.json"))) == 2


def test_a_failed_check_falls_back_to_the_whole_image_and_names_the_file(caplog):
  model = unet.create(TINY)
  params, _, _ = unet.init_params(model, TINY, jax.random.PRNGKey(0))
  params = dict(params, logits=dict(kernel=np.zeros_like(params["logits"]["kernel"]),
                                    bias=np.full_like(params["logits"]["bias"], -10.0)))
  seg = segment.Segmenter(params, TINY, "torchvision", "test")
  image = np.full((70, 90), 128, np.uint8)
  found = seg.lungs(image, name="some/file.png")
  assert not found.check.ok and "empty" in found.check.reason
  assert found.mask.shape == (70, 90) and not found.mask.any()
  assert "some/file.png" in caplog.text


class _FakeSegmenter:
  """Stands in for the stored segmenter: a fixed mask (or an empty one, failing the check)."""
  version = "fake"

  def __init__(self, mask):
    self.mask = mask

  def lungs(self, image, *, name=""):
    mask = masks.resize_mask(self.mask, *image.shape[:2])
    verdict = masks.check(mask)
    return segment.Found(mask if verdict.ok else np.zeros_like(mask), verdict)


@pytest.mark.parametrize("ok", [True, False])
def test_lung_crop_in_preprocessing_crops_to_the_box_or_keeps_the_whole_image(
    tmp_path, monkeypatch, ok):
  from cxr_jax.data import preprocess
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  path = tmp_path / "x.png"
  cv2.imwrite(str(path), gray)
  mask = two_lungs() if ok else np.zeros((64, 64), bool)
  monkeypatch.setattr(segment, "_DEFAULT", [_FakeSegmenter(mask)])
  config = preprocess.PreprocessConfig(48, clahe=False, crop="lungs", crop_margin=0.1,
                                       lungs="fake")
  out = preprocess.process_file(str(path), config)
  if ok:
    top, left, bottom, right = masks.crop_box(mask, 0.1)
    expected = preprocess.resize_square(gray[top:bottom, left:right], 48)
    assert out.lung_fallback == ""
  else:
    expected = preprocess.resize_square(gray, 48)
    assert "empty" in out.lung_fallback
  np.testing.assert_array_equal(out.image[..., 0], expected)
  assert (out.orig_height, out.orig_width) == (64, 64)
  with pytest.raises(ValueError, match="made with lung segmenter other"):
    preprocess.process_file(str(path), config.__class__(48, crop="lungs", lungs="other"))


def test_crop_none_keeps_the_build_hash_of_builds_made_before_the_field():
  from cxr_jax.data import preprocess
  assert set(preprocess.PreprocessConfig(224).to_json()) == {
      "image_size", "clahe", "clahe_clip_limit", "clahe_tile_grid", "version"}
  assert preprocess.PreprocessConfig(224, crop="lungs", lungs="abc").to_json()["lungs"] == "abc"


def test_fewer_images_than_a_batch_run_as_a_smaller_batch_with_the_same_logits():
  """The dataset build segments one image per call: it runs a batch of one (not a padded batch of
  8, 8x the work) and gets the logits the padded batch gives."""
  model = unet.create(TINY)
  params, _, preprocessing = unet.init_params(model, TINY, jax.random.PRNGKey(0))
  shapes = []

  def predict(p, x):
    shapes.append(x.shape[0])
    return model.apply({"params": p}, x)

  images = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
  alone = [train.predict_logits(predict, params, images[i:i + 1], preprocessing, 8)
           for i in range(3)]
  together = train.predict_logits(predict, params, images, preprocessing, 8)
  assert shapes == [1, 1, 1, 4]
  # The same per-image computation whatever the batch: equal to float32 rounding of the logits.
  scale = float(np.abs(together).max())
  np.testing.assert_allclose(np.concatenate(alone), together, rtol=0, atol=1e-5 * scale)
