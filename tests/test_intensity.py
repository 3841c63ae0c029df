"""Intensity standardisation (data.intensity): against scikit-image and OpenCV on real cxr3
images, masks, the preprocessing order, the lung path and the build hash."""

import csv

import cv2
import numpy as np
import pytest
from skimage.exposure import match_histograms

from configs.default import get_config
from cxr_jax.data import intensity, preprocess, readers, tfds_builder
from cxr_jax.data.build import source_specs
from cxr_jax.lungs import masks, segment


def _cxr3_image(root, source: str) -> np.ndarray:
  with open(root / "manifest.csv", newline="") as f:
    row = next(r for r in csv.DictReader(f) if r["source"] == source)
  return cv2.imread(str(root / row["file"]), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def image(cxr3_root):
  return _cxr3_image(cxr3_root, "actualmed")


@pytest.fixture(scope="module")
def other(cxr3_root):
  return _cxr3_image(cxr3_root, "hannover")


def test_match_equals_scikit_image_on_real_images(image, other):
  # Same algorithm (CDF values interpolated onto the reference's levels that hold mass), same
  # float operations: exactly skimage's output, rounded to uint8.
  expected = np.round(match_histograms(image, other)).astype(np.uint8)
  np.testing.assert_array_equal(intensity.match(image, intensity.cdf(other)), expected)


def test_match_to_the_fixed_reference_equals_scikit_image_within_one_level(image):
  # A reference image whose histogram is REFERENCE in millionths: its CDF differs from REFERENCE
  # by <= 5e-7, which moves an interpolated level by far less than one, so only a level landing
  # next to .5 can round the other way.
  n = 1_000_000
  counts = np.diff(np.round(intensity.REFERENCE * n).astype(np.int64), prepend=0)
  reference_image = np.repeat(np.arange(256, dtype=np.uint8), counts)[None]
  expected = np.round(match_histograms(image, reference_image)).astype(np.int64)
  diff = np.abs(intensity.match(image, intensity.REFERENCE).astype(np.int64) - expected)
  assert diff.max() <= 1 and diff.mean() < 0.01


def test_fixed_reference_is_a_smooth_cdf_with_mass_on_every_level():
  ref = intensity.REFERENCE
  assert ref.shape == (256,) and ref[-1] == 1.0
  assert np.all(np.diff(ref, prepend=0.0) > 0)  # every level reachable, mapping monotone
  # Built from its parameters in code, not from data: the same on every call and machine.
  np.testing.assert_array_equal(intensity._reference_cdf(intensity.REFERENCE_SHAPE), ref)
  assert ref[127] == pytest.approx(0.4, abs=0.05)  # ~40 % of a radiograph below mid-grey


def test_matched_real_image_follows_the_reference(image):
  matched_cdf = intensity.cdf(intensity.match(image, intensity.REFERENCE))
  largest_level_share = np.bincount(image.ravel()).max() / image.size
  assert np.abs(matched_cdf - intensity.REFERENCE).max() <= largest_level_share + 1e-3


def test_equalize_gives_a_uniform_cdf_and_equals_opencv(image):
  out = intensity.equalize(image)
  uniform = (np.arange(256) + 1) / 256
  largest_level_share = np.bincount(image.ravel()).max() / image.size
  # A level's pixels cannot be split, so the CDF is uniform up to one level's share.
  assert np.abs(intensity.cdf(out) - uniform).max() <= largest_level_share + 1 / 256
  assert out.min() == 0 and out.max() == 255
  # OpenCV's formula; it scales in float32, so a level could round the other way.
  assert np.abs(out.astype(int) - cv2.equalizeHist(image)).max() <= 1


def _two_halves(seed=0):
  """Left half dark (0..99), right half bright (150..255), mask = left half."""
  rng = np.random.default_rng(seed)
  img = np.concatenate([rng.integers(0, 100, (40, 30)), rng.integers(150, 256, (40, 30))], 1)
  mask = np.zeros(img.shape, bool)
  mask[:, :30] = True
  return img.astype(np.uint8), mask


@pytest.mark.parametrize("method", ["equalize", "match"])
def test_mask_takes_the_mapping_from_the_masked_pixels_only(method):
  img, mask = _two_halves()
  out = intensity.standardise(img, method, mask)
  # The masked half gets exactly the mapping of its own histogram ...
  np.testing.assert_array_equal(out[:, :30], intensity.standardise(img[:, :30], method))
  # ... and it is applied to the whole image: brighter than every masked pixel = top of the CDF.
  assert np.all(out[:, 30:] == 255)
  assert not np.array_equal(out, intensity.standardise(img, method))


@pytest.mark.parametrize("method", ["none", "equalize", "match"])
def test_shape_and_dtype_are_kept(image, method):
  out = intensity.standardise(image, method)
  assert out.shape == image.shape and out.dtype == np.uint8
  if method == "none":
    assert out is image


def test_bad_inputs_are_refused(image):
  with pytest.raises(ValueError, match="data.intensity"):
    intensity.standardise(image, "clahe")
  d = get_config().data
  d.intensity = "histogram"
  with pytest.raises(ValueError, match="data.intensity"):
    preprocess.PreprocessConfig.from_data_config(d)
  with pytest.raises(ValueError, match="selects no pixels"):
    intensity.equalize(image, np.zeros(image.shape, bool))
  with pytest.raises(ValueError, match="uint8"):
    intensity.equalize(image.astype(np.uint16))
  flat = np.full((8, 8), 7, np.uint8)  # one level: nothing to spread, kept
  np.testing.assert_array_equal(intensity.equalize(flat), flat)


def test_intensity_comes_before_clahe(image):
  config = preprocess.PreprocessConfig(64, intensity="equalize")
  expected = preprocess.resize_square(preprocess.clahe(intensity.equalize(image), 2.0, 8), 64)
  np.testing.assert_array_equal(preprocess.preprocess(image, config)[..., 0], expected)


def _build_name(root, **overrides) -> str:
  """The build's TFDS config name (s<size>_<hash>), computed as build_dataset does, unbuilt."""
  d = get_config().data
  d.update(overrides)
  sources = source_specs((f"manifest:{root}",))
  scan = readers.read_sources(sources)
  config = preprocess.PreprocessConfig.from_data_config(d).with_lungs()
  return tfds_builder.make_builder_config(config, sources, scan.records, scan.rejects).name


class _OldConfig:
  """to_json of PreprocessConfig(224) before crop and intensity existed."""
  image_size = 224

  def to_json(self):
    return dict(image_size=224, clahe=True, clahe_clip_limit=2.0, clahe_tile_grid=8, version=1)


def test_build_hash_is_unchanged_by_default_and_changes_with_intensity(cxr3_root):
  sources = source_specs((f"manifest:{cxr3_root}",))
  scan = readers.read_sources(sources)
  before = tfds_builder.make_builder_config(_OldConfig(), sources, scan.records, scan.rejects)
  default = _build_name(cxr3_root)
  assert default == before.name
  # intensity_in_lungs without a mapping computes nothing: same build, no segmenter needed.
  assert _build_name(cxr3_root, intensity_in_lungs=True) == default
  names = {_build_name(cxr3_root, intensity=m) for m in ("equalize", "match")}
  assert default not in names and len(names) == 2


def test_to_json_names_the_reference_and_version_only_when_used():
  keys = set(preprocess.PreprocessConfig(224, intensity="equalize").to_json())
  assert {"intensity", "intensity_in_lungs", "intensity_version"} <= keys
  assert "intensity_reference" not in keys and "lungs" not in keys
  matched = preprocess.PreprocessConfig(224, intensity="match", intensity_in_lungs=True,
                                        lungs="abc").to_json()
  assert matched["intensity_reference"] == intensity.REFERENCE_SHAPE and matched["lungs"] == "abc"


class _FakeSegmenter:
  """The stored segmenter's interface with a fixed mask (an empty one fails the check)."""
  version = "fake"

  def __init__(self, mask):
    self.mask = mask

  def lungs(self, image, *, name=""):
    verdict = masks.check(self.mask)
    return segment.Found(self.mask if verdict.ok else np.zeros_like(self.mask), verdict)


def _lungs_mask(size=64):
  mask = np.zeros((size, size), bool)
  mask[10:50, 8:26] = True
  mask[12:52, 38:58] = True
  return mask


@pytest.mark.parametrize("crop", ["none", "lungs"])
@pytest.mark.parametrize("ok", [True, False])
def test_in_lungs_maps_from_the_lung_pixels_or_falls_back_to_the_whole_image(
    tmp_path, monkeypatch, crop, ok):
  rng = np.random.default_rng(1)
  gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  mask = _lungs_mask() if ok else np.zeros((64, 64), bool)
  gray[mask] //= 2  # the lungs darker than the rest: their histogram gives another mapping
  path = tmp_path / "x.png"
  cv2.imwrite(str(path), gray)
  monkeypatch.setattr(segment, "_DEFAULT", [_FakeSegmenter(mask)])
  config = preprocess.PreprocessConfig(32, clahe=False, crop=crop, crop_margin=0.1,
                                       intensity="equalize", intensity_in_lungs=True,
                                       lungs="fake")
  out = preprocess.process_file(str(path), config)
  if ok:
    top, left, bottom, right = (masks.crop_box(mask, 0.1) if crop == "lungs" else (0, 0, 64, 64))
    box = (slice(top, bottom), slice(left, right))
    expected = intensity.equalize(gray[box], mask[box])
    assert not np.array_equal(expected, intensity.equalize(gray[box]))  # the mask mattered
    assert out.lung_fallback == ""
  else:
    expected = intensity.equalize(gray)
    assert "empty" in out.lung_fallback
  np.testing.assert_array_equal(out.image[..., 0], preprocess.resize_square(expected, 32))


def test_workdir_identity_check_covers_the_intensity_fields():
  from cxr_jax.evaluate.run import check_compatible

  run = get_config()
  given = get_config()
  given.data.intensity = "match"
  with pytest.raises(ValueError, match="data.intensity: run 'none', given 'match'"):
    check_compatible(run, given)
  check_compatible(run, get_config())
  for key in ("intensity", "intensity_in_lungs"):  # a run saved before the fields existed
    del run.data[key]
  check_compatible(run, get_config())
