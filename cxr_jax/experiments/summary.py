"""Fold results -> group summaries: per-fold numbers, mean, sd and a confidence interval.

The interval of a group with n >= 2 folds is the t interval of the fold mean,
mean +- t(1 - (1 - ci) / 2, n - 1) * sd / sqrt(n): it describes the spread of the fold models.
With a single fold it is that run's patient-group bootstrap interval (where evaluation computed
one), so a one-fold sweep still has error bars.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from cxr_jax.data.records import LABELS

CLASS_METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def _class_accuracy(m: dict) -> float:
  """One-vs-rest accuracy of a class, (tp + tn) / N (Lee et al.'s per-class accuracy)."""
  return (m["tp"] + m["tn"]) / (m["tp"] + m["tn"] + m["fp"] + m["fn"])


def flatten(metrics: dict, val_loss: float | None) -> dict:
  """One run's numbers under flat names: 'accuracy', 'macro_auc', 'covid/auc', ..., 'val_loss'."""
  out = {"accuracy": metrics["accuracy"], "macro_auc": metrics["macro"]["roc_auc"]["value"],
         "val_loss": val_loss}
  for name, m in metrics["per_class"].items():
    out[f"{name}/accuracy"] = _class_accuracy(m)
    out[f"{name}/sensitivity"] = m["sensitivity"]
    out[f"{name}/specificity"] = m["specificity"]
    out[f"{name}/auc"] = m["roc_auc"]
  return out


def bootstrap_interval(metrics: dict, key: str) -> tuple[float | None, float | None]:
  """The run's bootstrap interval for a flat metric name, (None, None) where there is none."""
  intervals = metrics.get("intervals")
  if not intervals:
    return None, None
  if key == "accuracy":
    entry = intervals["accuracy"]
  elif "/" in key:
    name, stat = key.split("/")
    entry = intervals["per_class"].get(name, {}).get({"auc": "roc_auc"}.get(stat, stat))
  else:
    entry = None
  return (entry["low"], entry["high"]) if entry else (None, None)


def aggregate(values: list[float | None], ci: float, bounds=(0.0, 1.0)) -> dict:
  """mean, sd (ddof 1), n and the t interval of the mean over the defined values, clipped to
  the metric's range `bounds` (a t interval knows nothing of a rate's bounds)."""
  defined = np.array([v for v in values if v is not None], np.float64)
  n = len(defined)
  if n == 0:
    return dict(mean=None, sd=None, n=0, low=None, high=None)
  mean = float(defined.mean())
  if n == 1:
    return dict(mean=mean, sd=None, n=1, low=None, high=None)
  sd = float(defined.std(ddof=1))
  half = float(scipy_stats.t.ppf(1 - (1 - ci) / 2, n - 1)) * sd / math.sqrt(n)
  low, high = np.clip([mean - half, mean + half], *bounds)
  return dict(mean=mean, sd=sd, n=n, low=float(low), high=float(high))


def summarize_group(fold_results: dict[int, dict], ci: float, select_metric: str) -> dict:
  """A cell's folds: per-fold flat metrics, aggregates, and the best fold by test and by val loss.

  Args:
    fold_results: {fold: runner.load_result(...)} of the finished folds.
    ci: confidence level of the intervals.
    select_metric: flat metric name, higher is better (the paper picked its model by test
      performance; the val-loss choice is the one that does not look at the test split).
  """
  folds = sorted(fold_results)
  flat = {f: flatten(fold_results[f]["metrics"], fold_results[f]["val_loss"]) for f in folds}
  keys = list(flat[folds[0]]) if folds else []
  summary = {k: aggregate([flat[f][k] for f in folds], ci,
                          (0.0, np.inf) if k == "val_loss" else (0.0, 1.0)) for k in keys}
  if len(folds) == 1:
    for k in keys:
      low, high = bootstrap_interval(fold_results[folds[0]]["metrics"], k)
      summary[k].update(low=low, high=high)
  interval = ("t interval over folds" if len(folds) > 1 else
              "patient-group bootstrap of the single fold")

  def best(key, sign):
    scored = [(sign * flat[f][key], f) for f in folds if flat[f].get(key) is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None  # ties: the first

  return dict(folds=folds, per_fold={str(f): flat[f] for f in folds}, summary=summary,
              interval=interval, ci=ci,
              by_source=by_source([fold_results[f]["metrics"] for f in folds]),
              external={str(f): fold_results[f].get("external", {}) for f in folds},
              best_fold_by_test=best(select_metric, 1), best_fold_by_val_loss=best("val_loss", -1),
              select_metric=select_metric)


def winners(groups: dict[str, dict], select_metric: str) -> dict:
  """The winning group by mean test metric (as the paper chose) and by mean validation loss."""
  def pick(key, sign):
    scored = [(sign * g["summary"][key]["mean"], name) for name, g in groups.items()
              if key in g["summary"] and g["summary"][key]["mean"] is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None  # ties: the first in the grid

  return dict(by_test=pick(select_metric, 1), by_val_loss=pick("val_loss", -1),
              select_metric=select_metric)


def class_names(groups: dict[str, dict]) -> list[str]:
  """Classes present in the flat metrics, in LABELS order first."""
  seen = {k.split("/")[0] for g in groups.values() for fold in g["per_fold"].values()
          for k in fold if "/" in k}
  return [c for c in LABELS if c in seen] + sorted(seen - set(LABELS))


def by_source(metrics_list: list[dict]) -> dict:
  """Per source of the test split, means over runs: images, accuracy, COVID AUC inside the
  source (None where the source holds one side only), and the accuracy of a rule that predicts
  from the source alone ("_source_only"). Models that learn the collection show it here."""
  out = {}
  for source in sorted({s for m in metrics_list for s in m.get("by_source", {})}):
    entries = [m["by_source"][source] for m in metrics_list if source in m.get("by_source", {})]
    aucs = [a for a in (e["per_class"].get("covid", {}).get("roc_auc") for e in entries)
            if a is not None]
    out[source] = dict(num_examples=float(np.mean([e["num_examples"] for e in entries])),
                       accuracy=float(np.mean([e["accuracy"] for e in entries])),
                       covid_auc=float(np.mean(aucs)) if aucs else None)
  only = [m["source_only_accuracy"] for m in metrics_list if m.get("source_only_accuracy") is not None]
  out["_source_only"] = float(np.mean(only)) if only else None
  return out
