"""The lung-field region and the share of heatmap mass inside it."""

import numpy as np
import pytest

from cxr_jax.explain import LUNG_BOXES, lung_field_mask, lung_field_share


def test_mask_is_two_boxes_mirrored_about_the_midline():
  mask = lung_field_mask(100, 100)
  assert mask.sum() == 2 * 60 * 32                     # rows 20..79, columns 12..43 and 56..87
  assert mask[20, 12] and mask[79, 43] and mask[50, 60]
  assert not mask[19, 20] and not mask[80, 20] and not mask[50, 11] and not mask[50, 44]
  assert not mask[:, 44:56].any()                       # the mediastinum is outside
  np.testing.assert_array_equal(mask, mask[:, ::-1])
  assert lung_field_mask(50, 50).mean() == pytest.approx(0.384, abs=0.02)


def test_mask_follows_pixel_centres_at_any_size():
  for h, w in ((7, 7), (48, 48), (64, 40)):
    mask = lung_field_mask(h, w)
    rows = (np.arange(h) + 0.5) / h
    assert set(np.flatnonzero(mask.any(axis=1))) == set(np.flatnonzero((rows >= 0.2) & (rows < 0.8)))
  assert lung_field_mask(4, 4, [(0.0, 0.0, 0.5, 0.5)]).tolist() == [
      [True, True, False, False], [True, True, False, False], [False] * 4, [False] * 4]


def test_share_of_uniform_inside_outside_and_mixed_maps():
  h = w = 50
  mask = lung_field_mask(h, w)
  assert lung_field_share(np.ones((h, w))) == pytest.approx(mask.mean())
  assert lung_field_share(mask * 3.0) == 1.0
  assert lung_field_share(~mask * 0.2) == 0.0
  half = np.where(mask, 1.0, 0.0) + np.where(mask, 0.0, 1.0) * mask.sum() / (~mask).sum()
  assert lung_field_share(half) == pytest.approx(0.5)


def test_share_ignores_negative_values_and_scale_and_batches():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(3, 32, 32))
  shares = lung_field_share(maps)
  assert shares.shape == (3,)
  mask = lung_field_mask(32, 32)
  for m, s in zip(maps, shares, strict=True):
    positive = np.maximum(m, 0)
    assert s == pytest.approx(positive[mask].sum() / positive.sum())
    assert lung_field_share(7.5 * m) == pytest.approx(s)
    assert lung_field_share(np.where(m > 0, m, -100.0)) == pytest.approx(s)


def test_map_without_positive_mass_is_nan():
  assert np.isnan(lung_field_share(np.zeros((10, 10))))
  out = lung_field_share(np.stack([-np.ones((10, 10)), np.ones((10, 10))]))
  assert np.isnan(out[0]) and out[1] == pytest.approx(lung_field_mask(10, 10).mean())


@pytest.mark.parametrize("boxes", [[], [(0.5, 0.1, 0.4, 0.2)], [(0.1, 0.1, 0.2, 1.2)], [(0.1, 0.2)]])
def test_bad_boxes_are_refused(boxes):
  with pytest.raises(ValueError):
    lung_field_mask(10, 10, boxes)


def test_bad_shape_is_refused():
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    lung_field_share(np.ones(5))
  assert len(LUNG_BOXES) == 2
