"""Metrics against hand-computed values; bootstrap over patient groups."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_jax.evaluate import bootstrap, compute_metrics
from cxr_jax.evaluate.metrics import point_metrics

# 8 images, 3 classes; class 2 (pneumonia) is present but never predicted.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array([
    [0.8, 0.1, 0.1],   # 0 -> 0
    [0.6, 0.3, 0.1],   # 0 -> 0
    [0.3, 0.6, 0.1],   # 0 -> 1
    [0.2, 0.7, 0.1],   # 1 -> 1
    [0.1, 0.5, 0.4],   # 1 -> 1
    [0.5, 0.4, 0.1],   # 1 -> 0
    [0.45, 0.2, 0.35],  # 2 -> 0
    [0.1, 0.55, 0.35],  # 2 -> 1
])


def test_point_metrics_match_hand_computed():
  m = point_metrics(LABELS, PROBS)
  assert m["accuracy"] == pytest.approx(4 / 8)
  assert m["confusion_matrix"] == [[2, 1, 0], [1, 2, 0], [1, 1, 0]]
  assert m["prediction_counts"] == [4, 4, 0]
  covid = m["per_class"]["covid"]
  # tp 2, fn 1, fp 2 (a normal and a pneumonia predicted covid), tn 3.
  assert (covid["tp"], covid["fn"], covid["fp"], covid["tn"]) == (2, 1, 2, 3)
  assert covid["sensitivity"] == pytest.approx(2 / 3)
  assert covid["specificity"] == pytest.approx(3 / 5)
  assert covid["precision"] == pytest.approx(2 / 4)
  assert covid["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  # AUC by counting pairs: covid scores .8 .6 .3 vs negatives .2 .1 .5 .45 .1:
  # .8 beats 5, .6 beats 5, .3 beats 3 (.2 .1 .1) -> 13/15.
  assert covid["roc_auc"] == pytest.approx(13 / 15)
  # AP: ranking .8(+) .6(+) .5(-) .45(-) .3(+): precisions at the positives 1, 1, 3/5.
  assert covid["average_precision"] == pytest.approx((1 + 1 + 3 / 5) / 3)
  # The class never predicted: precision and F1 defined as 0, sensitivity 0, specificity 1.
  pneu = m["per_class"]["pneumonia"]
  assert (pneu["predicted"], pneu["precision"], pneu["f1"]) == (0, 0.0, 0.0)
  assert pneu["sensitivity"] == 0.0 and pneu["specificity"] == 1.0
  assert any("never predicted" in r for r in pneu["undefined"])
  # pneumonia scores .35 .35 vs negatives .1 .1 .1 .1 .4 .1: each beats 5 of 6 -> 10/12.
  assert pneu["roc_auc"] == pytest.approx(10 / 12)
  assert m["macro"]["precision"]["value"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
  assert m["macro"]["roc_auc"]["num_classes"] == 3
  fpr, tpr, _ = skm.roc_curve(LABELS == 0, PROBS[:, 0])
  assert m["curves"]["covid"]["roc"] == dict(fpr=fpr.tolist(), tpr=tpr.tolist())
  json.dumps(m)


def test_absent_class_gives_null_auc_with_reason():
  labels, probs = LABELS[:6], PROBS[:6]   # no pneumonia labels at all
  m = compute_metrics(labels, probs, num_bootstrap=50)
  pneu = m["per_class"]["pneumonia"]
  assert pneu["roc_auc"] is None and pneu["average_precision"] is None
  assert pneu["sensitivity"] is None and pneu["specificity"] == 1.0
  assert any("no positive examples" in r for r in pneu["undefined"])
  assert m["macro"]["roc_auc"]["num_classes"] == 2
  assert m["intervals"]["per_class"]["pneumonia"]["roc_auc"]["num_valid"] == 0
  assert m["curves"]["pneumonia"] is None and m["curves"]["covid"] is not None
  json.dumps(m)


def test_calibration_bins_and_ece():
  m = point_metrics(LABELS, PROBS)
  counts = {round(b["upper"], 1): b["count"] for b in m["calibration"]["bins"] if b["count"]}
  # Top confidences .8 .6 .6 .7 .5 .5 .45 .55 in bins (lower, upper].
  assert counts == {0.5: 3, 0.6: 3, 0.7: 1, 0.8: 1}
  # Per bin |accuracy - confidence| * share: (.4,.5] 1/3 vs .4833, (.5,.6] 1/3 vs .5833,
  # (.6,.7] 1 vs .7, (.7,.8] 1 vs .8.
  ece = 3 / 8 * 0.15 + 3 / 8 * 0.25 + 1 / 8 * 0.3 + 1 / 8 * 0.2
  assert m["calibration"]["ece"] == pytest.approx(ece)


def test_weighted_auc_equals_sklearn_on_resamples():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 60)
  probs = rng.dirichlet(np.ones(3), 60).round(1)  # rounding creates ties
  groups = rng.integers(0, 25, 60)
  weights = bootstrap.resample_weights(groups, 20, seed=1)
  stats = bootstrap.resampled_stats(labels, probs, weights)
  preds = probs.argmax(1)
  for b in range(20):
    w = weights[b]
    for k in range(3):
      truth = labels == k
      assert stats[f"{k}/roc_auc"][b] == pytest.approx(
          skm.roc_auc_score(truth, probs[:, k], sample_weight=w))
      assert stats[f"{k}/sensitivity"][b] == pytest.approx(
          skm.recall_score(truth, preds == k, sample_weight=w))
    assert stats["accuracy"][b] == pytest.approx(skm.accuracy_score(labels, preds, sample_weight=w))


def test_resample_weights_draw_whole_groups():
  groups = np.array(["a", "a", "a", "b", "c", "c", "d"])
  w = bootstrap.resample_weights(groups, 500, seed=0)
  assert w.shape == (500, 7)
  # Every image of a group has its group's count; each resample draws num_groups groups.
  assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
  assert np.all(w[:, [0, 3, 4, 6]].sum(axis=1) == 4)
  np.testing.assert_array_equal(w, bootstrap.resample_weights(groups, 500, seed=0))


def test_group_bootstrap_wider_than_image_bootstrap_for_one_big_patient():
  # 30 single-image patients, all right; one patient with 30 images, all wrong.
  labels = np.zeros(60, dtype=int)
  probs = np.tile([0.9, 0.05, 0.05], (60, 1))
  probs[30:] = [0.1, 0.8, 0.1]
  groups = np.concatenate([np.arange(30), np.full(30, 99)])
  by_group = compute_metrics(labels, probs, groups=groups, num_bootstrap=1000, seed=0)
  by_image = compute_metrics(labels, probs, groups=None, num_bootstrap=1000, seed=0)
  assert by_group["intervals"]["unit"] == "patient_group" and by_group["intervals"]["num_groups"] == 31
  assert by_image["intervals"]["unit"] == "image"
  g, i = by_group["intervals"]["accuracy"], by_image["intervals"]["accuracy"]
  # Whether the big patient is drawn 0, 1 or 2 times moves accuracy between ~1 and ~1/3;
  # image resampling only jitters it around 0.5 by ~1/sqrt(60).
  assert g["high"] - g["low"] > 0.35
  assert i["high"] - i["low"] < 0.3
  assert g["high"] == pytest.approx(1.0)   # resamples without the big patient exist


def test_bootstrap_1000_resamples_is_fast():
  import time
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 300)
  probs = rng.dirichlet(np.ones(3), 300)
  start = time.perf_counter()
  compute_metrics(labels, probs, groups=rng.integers(0, 200, 300), num_bootstrap=1000)
  assert time.perf_counter() - start < 10.0


def test_source_breakdown_counts_only_without_both_classes():
  sources = np.array(["x", "x", "x", "y", "y", "y", "y", "y"])
  m = compute_metrics(LABELS, PROBS, sources=sources, num_bootstrap=0)
  x, y = m["by_source"]["x"], m["by_source"]["y"]
  assert x["label_counts"] == [3, 0, 0] and x["accuracy"] == pytest.approx(2 / 3)
  # Source x holds only covid: covid's one-vs-rest pair lacks negatives -> counts only.
  assert "roc_auc" not in x["per_class"]["covid"] and x["per_class"]["covid"]["positives"] == 3
  assert y["per_class"]["normal"]["roc_auc"] == pytest.approx(
      skm.roc_auc_score(LABELS[3:] == 1, PROBS[3:, 1]))
  # A rule answering covid for x and normal for y gets 3 + 3 of 8 right.
  assert m["source_only_accuracy"] == pytest.approx(6 / 8)
  assert "intervals" not in m


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="labels must lie"):
    compute_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), num_bootstrap=0)
  with pytest.raises(ValueError, match="expected labels"):
    compute_metrics(np.array([0, 1]), np.full((3, 3), 1 / 3), num_bootstrap=0)
  with pytest.raises(ValueError, match="patient groups"):
    compute_metrics(np.array([0, 1]), np.full((2, 3), 1 / 3), groups=[1], num_bootstrap=10)
