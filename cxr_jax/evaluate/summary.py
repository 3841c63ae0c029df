"""compute_metrics: point metrics, patient-group bootstrap intervals and the per-source breakdown."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from cxr_jax.data.records import LABELS
from cxr_jax.evaluate.bootstrap import bootstrap_intervals
from cxr_jax.evaluate.metrics import check_inputs, class_metrics, point_metrics


def source_breakdown(labels: np.ndarray, probs: np.ndarray, sources, class_names) -> dict:
  """Per source: counts and confusion matrix always; a class's one-vs-rest metrics only where the
  source has both positives and negatives of that class (counts otherwise)."""
  sources = np.asarray(sources).astype(str)
  preds = probs.argmax(axis=1)
  num_classes = probs.shape[1]
  out = {}
  for source in sorted(set(sources.tolist())):
    sel = sources == source
    y, p = labels[sel], probs[sel]
    per_class = {}
    for k, name in enumerate(class_names):
      m = class_metrics(y, p, k)
      if m["positives"] == 0 or m["negatives"] == 0:
        keep = ("positives", "negatives", "predicted", "tp", "fn", "fp", "tn")
        m = {key: m[key] for key in keep}
        m["note"] = "only one side of the one-vs-rest pair in this source: counts only"
      per_class[name] = m
    out[source] = dict(
        num_examples=int(sel.sum()),
        label_counts=np.bincount(y, minlength=num_classes).tolist(),
        prediction_counts=np.bincount(preds[sel], minlength=num_classes).tolist(),
        accuracy=float(np.mean(preds[sel] == y)),
        confusion_matrix=skm.confusion_matrix(y, preds[sel], labels=range(num_classes)).tolist(),
        per_class=per_class)
  return out


def _auc(truth: np.ndarray, score: np.ndarray, what: str) -> dict:
  """{"value": ROC AUC} where both sides are present, else {"value": None, "why": ...}."""
  positives, negatives = int(truth.sum()), int((~truth).sum())
  if positives and negatives:
    return dict(value=float(skm.roc_auc_score(truth, score)), positives=positives,
                negatives=negatives)
  missing = "positive" if not positives else "negative"
  return dict(value=None, positives=positives, negatives=negatives,
              why=f"no {missing} images for {what} in this source")


def within_source(labels: np.ndarray, probs: np.ndarray, sources, class_names) -> dict:
  """What survives the source shortcut: per source, the share of its images called each class,
  the sensitivity of each class it holds, COVID-vs-rest AUC where the source holds COVID and other images, and normal-vs-pneumonia AUC
  where it holds both (score 1 - p(normal): a COVID call is a pneumonia call too, so a model that
  calls every pneumonia "COVID" is not penalised for the wrong pneumonia). Undefined AUCs are
  None with the reason; nothing is pooled across sources, so no collection can stand in for a
  label."""
  sources = np.asarray(sources).astype(str)
  names = list(class_names)
  preds = probs.argmax(axis=1)
  out = {}
  for source in sorted(set(sources.tolist())):
    sel = sources == source
    y, p, n = labels[sel], probs[sel], int(sel.sum())
    entry = dict(num_examples=n,
                 labels={c: int(np.sum(y == k)) for k, c in enumerate(names)},
                 called={c: float(np.mean(preds[sel] == k)) for k, c in enumerate(names)},
                 # Of the classes the source holds: the share of their images called right.
                 sensitivity={c: float(np.mean(preds[sel][y == k] == k))
                              for k, c in enumerate(names) if np.any(y == k)})
    if {"covid", "normal", "pneumonia"} <= set(names):
      covid, normal, pneumonia = (names.index(c) for c in ("covid", "normal", "pneumonia"))
      entry["covid_auc"] = _auc(y == covid, p[:, covid], "COVID vs the other classes")
      keep = (y == normal) | (y == pneumonia)
      entry["normal_vs_pneumonia_auc"] = _auc(y[keep] == pneumonia, 1.0 - p[keep, normal],
                                              "normal vs pneumonia")
    out[source] = entry
  return out


def source_only_accuracy(labels: np.ndarray, sources) -> float:
  """Accuracy of a rule that sees only the source and answers its most frequent label.

  Computed on the evaluated split itself, so it is an optimistic bound; when it is close to the
  model's accuracy, the model may be separating collections rather than diseases.
  """
  sources = np.asarray(sources).astype(str)
  correct = 0
  for source in set(sources.tolist()):
    correct += np.bincount(labels[sources == source]).max()
  return float(correct / len(labels))


def compute_metrics(labels, probs, *, groups=None, sources=None, num_bootstrap: int = 1000,
                    ci: float = 0.95, seed: int = 0, class_names=LABELS) -> dict:
  """Every evaluation number for one prediction set, JSON-serialisable.

  Args:
    labels: [N] true class indices.
    probs: [N, C] class probabilities (argmax = prediction).
    groups: [N] patient-group keys for the bootstrap; None = image-level bootstrap (reported as
      unit "image" in the result, which understates uncertainty for multi-image patients).
    sources: [N] source (collection) names for the per-source breakdown; None = no breakdown.
    num_bootstrap: resamples for the confidence intervals; 0 = no intervals.
    ci: confidence level of the percentile intervals.
    seed: bootstrap seed.
    class_names: names of the probability columns.
  """
  labels, probs = check_inputs(labels, probs)
  out = point_metrics(labels, probs, class_names=class_names)
  if num_bootstrap > 0:
    out["intervals"] = bootstrap_intervals(labels, probs, groups, num_resamples=num_bootstrap,
                                           ci=ci, seed=seed, class_names=list(class_names))
  if sources is not None:
    if len(sources) != len(labels):
      raise ValueError(f"{len(sources)} sources for {len(labels)} labels")
    out["by_source"] = source_breakdown(labels, probs, sources, list(class_names))
    out["within_source"] = within_source(labels, probs, sources, class_names)
    out["source_only_accuracy"] = source_only_accuracy(labels, sources)
  return out


def brief(metrics: dict) -> dict:
  """What an audit or an experiment keeps of one evaluation (the full set stays in its own metrics.json)."""
  keep = ("num_examples", "class_names", "label_counts", "prediction_counts", "accuracy",
          "source_only_accuracy", "within_source", "ood", "unreadable", "written")
  part = {k: metrics[k] for k in keep if k in metrics}
  part["accuracy_ci"] = (metrics.get("intervals") or {}).get("accuracy")
  part["roc_auc"] = {c: m["roc_auc"] for c, m in metrics["per_class"].items()}
  part["sensitivity"] = {c: m["sensitivity"] for c, m in metrics["per_class"].items()}
  return part
