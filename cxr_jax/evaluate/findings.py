"""Metrics of the multi-label findings stage (twice transfer): per-finding ROC AUC and support.

A finding whose targets hold one class only in the evaluated set (no positives, or no negatives:
common for rare findings such as Hernia on a small split) has AUC NaN, never an error; its
positives / negatives counts say why. The mean AUC averages the findings that have both classes
and says how many it averaged. NaN rather than None (unlike metrics.py), so that per-epoch values
stay numeric arrays for np.nanmean and TensorBoard; json.dumps writes it as NaN.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from cxr_jax.data.findings import FINDINGS


def _check(probs, targets, names) -> tuple[np.ndarray, np.ndarray]:
  probs, targets = np.asarray(probs, np.float64), np.asarray(targets)
  if probs.ndim != 2 or targets.shape != probs.shape:
    raise ValueError(f"expected probs and targets [N, K], got {probs.shape} and {targets.shape}")
  if len(names) != probs.shape[1]:
    raise ValueError(f"{len(names)} finding names for {probs.shape[1]} columns")
  if not len(probs):
    raise ValueError("no examples to evaluate")
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs contain NaN or inf")
  if not np.all((targets == 0) | (targets == 1)):
    raise ValueError("targets must be multi-hot (0 or 1)")
  return probs, targets == 1


def findings_metrics(probs, targets, names=FINDINGS) -> dict:
  """Per-finding AUC of scores probs [N, K] (probabilities or logits: AUC only ranks them)
  against multi-hot targets [N, K]; names[k] names column k.

  Returns dict(num_examples, per_finding={name: dict(auc, positives, negatives)}, mean_auc,
  num_defined (findings in the mean), undefined (names whose AUC is NaN)).
  """
  probs, truth = _check(probs, targets, names)
  per_finding = {}
  for k, name in enumerate(names):
    positives = int(truth[:, k].sum())
    negatives = len(truth) - positives
    auc = (float(skm.roc_auc_score(truth[:, k], probs[:, k])) if positives and negatives
           else float("nan"))
    per_finding[name] = dict(auc=auc, positives=positives, negatives=negatives)
  defined = [m["auc"] for m in per_finding.values() if not np.isnan(m["auc"])]
  return dict(num_examples=len(truth), per_finding=per_finding,
              mean_auc=float(np.mean(defined)) if defined else float("nan"),
              num_defined=len(defined),
              undefined=[n for n, m in per_finding.items() if np.isnan(m["auc"])])


def findings_evaluation(run) -> dict:
  """Per-finding test AUCs of the kept model of a findings-task run (`run.LoadedRun`), with the
  split, its size and the dataset version: what the trainer writes to its metrics.json."""
  import jax

  from cxr_jax.data.findings import multi_hot

  logits, ids = run.logits("test")
  probs = np.asarray(jax.nn.sigmoid(logits))
  targets = multi_hot(np.asarray(run.built.metadata["findings"])[ids])
  metrics = findings_metrics(probs, targets, FINDINGS)
  return {"task": "findings", "split": "test", "num_examples": int(len(ids)), **metrics,
          "run": {"workdir": str(run.workdir), "dataset": run.built.version}}
