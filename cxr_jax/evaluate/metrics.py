"""Classification metrics for one set of predictions: accuracy, one-vs-rest per class, macro averages.

Conventions (documented because they decide what "defined" means for degenerate splits):
- Predictions are the argmax of `probs`.
- precision of a class never predicted = 0.0 (scikit-learn's zero_division=0), and its F1 = 0.0;
  `predicted` in the per-class entry shows why.
- sensitivity of a class absent from the labels, and specificity when every label is that class,
  are None, as are ROC AUC and average precision when one side of the one-vs-rest pair is missing;
  `undefined` in the per-class entry gives the reason. Macro averages skip None values and say how
  many classes they average.
Everything returned is JSON-serialisable (floats, ints, lists, None).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from cxr_jax.data.records import LABELS


def check_inputs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  """Validates and converts labels [N] (int class index) and probs [N, C]."""
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected labels [N] and probs [N, C], got {labels.shape} and {probs.shape}")
  if len(labels) == 0:
    raise ValueError("no examples to evaluate")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= probs.shape[1]:
    raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs contain NaN or inf")
  return labels.astype(np.int64), probs


def _ratio(num: float, den: float) -> float | None:
  return float(num / den) if den > 0 else None


def class_metrics(labels: np.ndarray, probs: np.ndarray, k: int) -> dict:
  """One-vs-rest metrics of class `k`; counts always, rates where defined (see module doc)."""
  preds = probs.argmax(axis=1)
  truth, predicted = labels == k, preds == k
  tp = int(np.sum(truth & predicted))
  fn = int(np.sum(truth & ~predicted))
  fp = int(np.sum(~truth & predicted))
  tn = int(np.sum(~truth & ~predicted))
  out = dict(
      positives=tp + fn, negatives=tn + fp, predicted=tp + fp, tp=tp, fn=fn, fp=fp, tn=tn,
      sensitivity=_ratio(tp, tp + fn), specificity=_ratio(tn, tn + fp),
      precision=float(skm.precision_score(truth, predicted, zero_division=0)),
      f1=float(skm.f1_score(truth, predicted, zero_division=0)),
      roc_auc=None, average_precision=None, undefined=[])
  if tp + fp == 0:
    out["undefined"].append("class never predicted: precision and F1 set to 0")
  if tp + fn == 0:
    out["undefined"].append("no positive examples: sensitivity, AUC and AP undefined")
  if tn + fp == 0:
    out["undefined"].append("no negative examples: specificity and AUC undefined")
  if tp + fn > 0 and tn + fp > 0:
    score = probs[:, k]
    out["roc_auc"] = float(skm.roc_auc_score(truth, score))
    out["average_precision"] = float(skm.average_precision_score(truth, score))
  return out


def class_curves(labels: np.ndarray, probs: np.ndarray, k: int) -> dict | None:
  """ROC and precision-recall curve points of class `k` vs rest; None if a side is missing."""
  truth, score = labels == k, probs[:, k]
  if truth.all() or not truth.any():
    return None
  fpr, tpr, _ = skm.roc_curve(truth, score)
  precision, recall, _ = skm.precision_recall_curve(truth, score)
  return dict(roc=dict(fpr=fpr.tolist(), tpr=tpr.tolist()),
              pr=dict(precision=precision.tolist(), recall=recall.tolist()))


def _macro(per_class: dict, key: str) -> dict:
  values = [m[key] for m in per_class.values() if m[key] is not None]
  return dict(value=float(np.mean(values)) if values else None, num_classes=len(values))


def calibration(labels: np.ndarray, probs: np.ndarray, num_bins: int = 10) -> dict:
  """Top-label reliability: per confidence bin the mean confidence and accuracy, and the ECE."""
  conf = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  # Bin i holds confidences in (edges[i], edges[i+1]]; confidence 0 cannot occur for a softmax.
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
  bins, ece = [], 0.0
  for i in range(num_bins):
    sel = idx == i
    n = int(sel.sum())
    if n:
      ece += n / len(conf) * abs(correct[sel].mean() - conf[sel].mean())
    bins.append(dict(lower=float(edges[i]), upper=float(edges[i + 1]), count=n,
                     confidence=float(conf[sel].mean()) if n else None,
                     accuracy=float(correct[sel].mean()) if n else None))
  return dict(ece=float(ece), bins=bins)


def point_metrics(labels, probs, *, class_names=LABELS) -> dict:
  """All metrics of one prediction set, without confidence intervals; curve points under
  "curves" (kept apart so that "per_class" stays a short table)."""
  labels, probs = check_inputs(labels, probs)
  num_classes = probs.shape[1]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} probability columns")
  preds = probs.argmax(axis=1)
  per_class = {name: class_metrics(labels, probs, k) for k, name in enumerate(class_names)}
  keys = ("sensitivity", "specificity", "precision", "f1", "roc_auc", "average_precision")
  return dict(
      num_examples=int(len(labels)),
      class_names=list(class_names),
      label_counts=np.bincount(labels, minlength=num_classes).tolist(),
      prediction_counts=np.bincount(preds, minlength=num_classes).tolist(),
      accuracy=float(np.mean(preds == labels)),
      # Rows are true classes, columns predicted classes.
      confusion_matrix=skm.confusion_matrix(labels, preds, labels=range(num_classes)).tolist(),
      per_class=per_class,
      macro={key: _macro(per_class, key) for key in keys},
      calibration=calibration(labels, probs),
      curves={name: class_curves(labels, probs, k) for k, name in enumerate(class_names)})
