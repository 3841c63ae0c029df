"""The share of heatmap mass on the predicted lung masks (explain.regions), and in explain_workdir."""

import json

import numpy as np
import pytest

from cxr_jax.explain import explain_workdir, lung_field_mask
from cxr_jax.explain.regions import box_prior_shares, found_lung_shares, heatmap_lung_shares
from cxr_jax.lungs import masks, segment
from tests.test_audit import _HalvesSegmenter
from tests.test_evaluate_workdir import save_small_run

SIZE = 48


def _hand_example():
  """Three 8x8 maps and masks whose shares are counted by hand below."""
  heat, mask = np.zeros((3, 8, 8)), np.zeros((3, 8, 8), bool)
  mask[0, 2:6, 1:3] = mask[0, 2:6, 5:7] = True     # two 4x2 lungs: 16 of 64 pixels, chance 0.25
  heat[0, 3, 1], heat[0, 4, 6] = 2.0, 1.0           # 3.0 on the lungs ...
  heat[0, 0, 0], heat[0, 7, 4] = 2.0, -3.0          # ... 2.0 off them; negative mass left out
  mask[1, :4] = True                                # top half: chance 0.5
  heat[1] = 1.0                                     # uniform: share = chance = 0.5
  mask[2, 2:6, 1:7] = True                          # heat[2] has no positive mass: not scored
  return heat, mask


def test_lung_share_against_a_hand_computed_example():
  heat, mask = _hand_example()
  out = heatmap_lung_shares(heat, mask, ids=[10, 11, 12])
  assert [p["id"] for p in out["per_image"]] == [10, 11, 12]
  assert out["per_image"][0]["share"] == pytest.approx(3.0 / 5.0)
  assert out["per_image"][0]["chance"] == pytest.approx(16 / 64)
  assert out["per_image"][1]["share"] == pytest.approx(0.5)
  assert out["per_image"][2]["share"] is None and out["per_image"][2]["chance"] == 24 / 64
  assert out["images"] == 2 and out["no_positive_mass"] == 1
  assert out["mean_share"] == pytest.approx((0.6 + 0.5) / 2)
  assert out["mean_chance"] == pytest.approx((0.25 + 0.5) / 2)   # over the scored images only
  assert out["share_minus_chance"] == pytest.approx(0.55 - 0.375)
  json.dumps(out, allow_nan=False)                                # audit.json is strict JSON


def test_a_coarser_heatmap_is_resized_to_its_mask():
  _, mask = _hand_example()
  coarse = np.zeros((1, 4, 4))
  coarse[0, 0, 0] = 1.0                                  # all mass in the top-left corner ...
  out = heatmap_lung_shares(coarse, mask[1:2])
  assert out["mean_share"] == pytest.approx(1.0)        # ... which is in the top-half mask
  uniform = heatmap_lung_shares(np.ones((1, 4, 4)), mask[:1])
  assert uniform["mean_share"] == pytest.approx(uniform["mean_chance"]) == pytest.approx(0.25)


def test_box_prior_uses_the_same_math_with_the_fixed_boxes():
  maps = np.random.default_rng(0).uniform(size=(2, 20, 20))
  out = box_prior_shares(maps)
  assert out["mean_chance"] == pytest.approx(lung_field_mask(20, 20).mean())
  share, _ = masks.lung_share(maps, np.broadcast_to(lung_field_mask(20, 20), maps.shape))
  assert out["mean_share"] == pytest.approx(share.mean())


def test_a_mask_failing_its_check_is_listed_not_scored():
  heat, mask = _hand_example()
  found = [segment.Found(mask[0], masks.Check(True, "", 0.25)),
           segment.Found(np.zeros((8, 8), bool), masks.Check(False, "empty mask (no lung found)"))]
  out = found_lung_shares(heat[:2], found, [5, 6], ["a.png", "b.png"])
  assert out["images"] == 1 and out["mean_share"] == pytest.approx(0.6)
  assert out["qc_failed"] == [dict(id=6, file="b.png", reason="empty mask (no lung found)")]
  none = found_lung_shares(heat[1:2], found[1:], [6], ["b.png"])
  assert none["images"] == 0 and none["mean_share"] is None and len(none["qc_failed"]) == 1


class _FirstFailsSegmenter(_HalvesSegmenter):
  """The halves masks, except that the first image of each call fails its check."""

  def lungs_many(self, images, names=None):
    out = super().lungs_many(images, names)
    empty = np.zeros_like(out[0].mask)
    return [segment.Found(empty, masks.check(empty))] + out[1:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, save_random_run):
  # block4: 6x6 maps at 48 px
  return save_small_run(tmp_path_factory.mktemp("gen"), save_random_run, size=SIZE,
                        layer="block4")


def test_explain_workdir_reports_lung_shares_beside_the_box_prior(workdir):
  result = explain_workdir(workdir, per_class=1, segmenter=_FirstFailsSegmenter())
  index = json.loads((workdir / "explain_test_gradcam" / "index.json").read_text())
  box, lung = index["regions"]["box_prior"], index["regions"]["lung_mask"]
  assert result["regions"] == index["regions"]
  entries = index["images"]
  assert box["mean_chance"] == pytest.approx(lung_field_mask(SIZE, SIZE).mean())
  assert box["images"] + box["no_positive_mass"] == len(entries)
  failed = [e for e in entries if "lung_mask_failed" in e]
  assert failed and {f["id"] for f in lung["qc_failed"]} == {e["id"] for e in failed}
  assert lung["images"] + lung["no_positive_mass"] + len(failed) == len(entries)
  assert lung["segmenter"] == "halves"
  halves = _HalvesSegmenter().lungs_many([np.zeros((SIZE, SIZE))])[0].mask.mean()
  for e in entries:
    if "lung_mask_failed" not in e:
      assert e["lung_chance"] == pytest.approx(halves)
      assert e["lung_share"] is None or 0.0 <= e["lung_share"] <= 1.0
  assert lung["mean_share"] is not None and 0.0 <= lung["mean_share"] <= 1.0


def test_explain_workdir_lrp_scores_its_maps_on_the_same_masks(workdir):
  result = explain_workdir(workdir, per_class=1, method="lrp", segmenter=_HalvesSegmenter())
  lung = result["regions"]["lung_mask"]
  halves = _HalvesSegmenter().lungs_many([np.zeros((SIZE, SIZE))])[0].mask.mean()
  assert result["layer"] == "input" and not lung["qc_failed"]
  assert lung["mean_chance"] == pytest.approx(halves)
  assert 0.0 <= lung["mean_share"] <= 1.0


def test_without_a_segmenter_the_mask_share_says_why(tmp_path, monkeypatch):
  from cxr_jax.explain import workdir as explain_lib
  from cxr_jax.lungs import store

  assert "segmenter=False" in explain_lib._segmenter_or_why(False)[1]
  monkeypatch.setattr(store, "root", lambda: tmp_path)   # nothing stored: explain never trains
  segmenter, why = explain_lib._segmenter_or_why(None)
  assert segmenter is None and "no stored lung segmenter" in why
  shares = explain_lib._region_shares([], [], [], why, None)
  assert shares["lung_mask"] == dict(not_run=why) and shares["box_prior"]["images"] == 0
