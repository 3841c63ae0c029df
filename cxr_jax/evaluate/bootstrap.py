"""Percentile bootstrap confidence intervals that resample patient groups, not images.

Images of one patient group are correlated (same patient, often the same film series), so an
image-level bootstrap understates the uncertainty. Each resample draws the groups with replacement
and takes every image of every drawn group; a group drawn c times gives its images weight c.
All resamples are evaluated at once as weighted statistics over a [num_resamples, num_images]
weight matrix, which is exact: weight c is the same as c copies of the image.
"""

from __future__ import annotations

import numpy as np

# Statistics with a confidence interval: accuracy, and per class the following.
CLASS_STATS = ("roc_auc", "sensitivity", "specificity")


def resample_weights(groups, num_resamples: int, seed: int) -> np.ndarray:
  """Per resample and image, how often the image's group was drawn: int32 [num_resamples, N].

  `groups` [N] are patient-group keys (any hashable dtype); None means every image is its own
  group (image-level bootstrap).
  """
  if groups is None:
    raise ValueError("groups is None: pass np.arange(N) for an image-level bootstrap")
  _, group_index = np.unique(np.asarray(groups), return_inverse=True)
  group_index = group_index.reshape(-1)
  num_groups = int(group_index.max()) + 1
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, num_groups, size=(num_resamples, num_groups))
  # counts[b, g] = how often group g was drawn in resample b.
  offsets = (np.arange(num_resamples) * num_groups)[:, None]
  counts = np.bincount((draws + offsets).ravel(), minlength=num_resamples * num_groups)
  counts = counts.reshape(num_resamples, num_groups).astype(np.int32)
  return counts[:, group_index]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  out = np.full(num.shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """ROC AUC per weight row (Mann-Whitney, ties count 1/2): NaN where a row lacks a class.

  truth [N] bool, score [N], weights [B, N] -> [B]. Equals scikit-learn's roc_auc_score with
  sample_weight for every row (tested).
  """
  order = np.argsort(score, kind="stable")
  sorted_score = score[order]
  neg_w = weights[:, order] * (~truth[order])
  # cum[:, j] = negative weight of the j lowest scores.
  cum = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(neg_w, axis=1)], axis=1)
  pos = np.flatnonzero(truth)
  lo = np.searchsorted(sorted_score, score[pos], side="left")
  hi = np.searchsorted(sorted_score, score[pos], side="right")
  below = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])
  pos_w = weights[:, pos]
  num = np.sum(pos_w * below, axis=1)
  den = pos_w.sum(axis=1) * cum[:, -1]
  return _safe_divide(num, den.astype(np.float64))


def resampled_stats(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict:
  """Accuracy and per-class AUC / sensitivity / specificity for every weight row (NaN = undefined)."""
  weights = weights.astype(np.float64)
  preds = probs.argmax(axis=1)
  total = weights.sum(axis=1)
  stats = {"accuracy": _safe_divide(weights @ (preds == labels).astype(np.float64), total)}
  for k in range(probs.shape[1]):
    truth, predicted = labels == k, preds == k
    pos, neg = weights @ truth.astype(np.float64), weights @ (~truth).astype(np.float64)
    stats[f"{k}/sensitivity"] = _safe_divide(weights @ (truth & predicted).astype(np.float64), pos)
    stats[f"{k}/specificity"] = _safe_divide(weights @ (~truth & ~predicted).astype(np.float64), neg)
    stats[f"{k}/roc_auc"] = weighted_auc(truth, probs[:, k], weights)
  return stats


def percentile_interval(values: np.ndarray, ci: float) -> dict:
  """Percentile interval over the resamples where the statistic is defined."""
  valid = values[np.isfinite(values)]
  if len(valid) == 0:
    return dict(low=None, high=None, num_valid=0)
  alpha = (1.0 - ci) / 2.0
  low, high = np.quantile(valid, [alpha, 1.0 - alpha])
  return dict(low=float(low), high=float(high), num_valid=int(len(valid)))


def bootstrap_intervals(labels, probs, groups, *, num_resamples: int = 1000, ci: float = 0.95,
                        seed: int = 0, class_names=None) -> dict:
  """CIs for accuracy and per-class AUC, sensitivity, specificity.

  Returns {"accuracy": {low, high, num_valid}, "per_class": {name: {stat: {...}}}, plus the
  settings}. `num_valid` < num_resamples means some resamples lacked a class for that statistic.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
  if groups is None:
    groups, unit = np.arange(len(labels)), "image"
  else:
    unit = "patient_group"
    if len(groups) != len(labels):
      raise ValueError(f"{len(groups)} patient groups for {len(labels)} labels")
  weights = resample_weights(groups, num_resamples, seed)
  stats = resampled_stats(labels, probs, weights)
  names = class_names or [str(k) for k in range(probs.shape[1])]
  return dict(
      num_resamples=num_resamples, ci=ci, seed=seed, unit=unit,
      num_groups=int(len(np.unique(np.asarray(groups)))),
      accuracy=percentile_interval(stats["accuracy"], ci),
      per_class={name: {s: percentile_interval(stats[f"{k}/{s}"], ci) for s in CLASS_STATS}
                 for k, name in enumerate(names)})
