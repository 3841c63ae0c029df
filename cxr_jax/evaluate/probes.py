"""Shortcut probes: how much of an image's collection a representation gives away.

Source recognition (DeGrave et al. 2021; Zech et al. 2018): a logistic regression predicts each
image's source from backbone features, under patient-grouped cross-validation (no patient in the
probe's training and test folds at once). Reported against two baselines: the majority source
(accuracy) and chance (balanced accuracy = 1 / number of sources). Features of the kept model
measure what the trained network encodes; the frozen ImageNet features of the same architecture
are the reference for what the images give away before any training on them.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def source_recognition(features, sources, groups, *, folds: int = 5, seed: int = 0) -> dict:
  """Cross-validated source prediction from `features` [N, F]; grouped by `groups` [N].

  Returns accuracy and balanced accuracy with their baselines, per-source recall and the
  confusion matrix (rows true source, columns predicted), JSON-serialisable.
  """
  x = np.asarray(features, np.float64)
  sources = np.asarray(sources).astype(str)
  groups = np.asarray(groups).astype(str)
  if not (len(x) == len(sources) == len(groups)):
    raise ValueError(f"{len(x)} feature rows, {len(sources)} sources, {len(groups)} groups")
  names, y = np.unique(sources, return_inverse=True)
  if len(names) < 2:
    return dict(defined=False, why=f"one source only ({names[0] if len(names) else 'none'})")
  per_source = np.bincount(y)
  # Every fold needs each source: no more folds than the rarest source has patient groups.
  groups_per_source = [len(set(groups[y == k])) for k in range(len(names))]
  n_splits = int(min(folds, min(groups_per_source)))
  if n_splits < 2:
    rare = names[int(np.argmin(groups_per_source))]
    return dict(defined=False, why=f"source {rare!r} has one patient group: cannot cross-validate")
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
  cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
  pred = cross_val_predict(probe, x, y, groups=groups, cv=cv)
  confusion = skm.confusion_matrix(y, pred, labels=range(len(names)))
  return dict(
      defined=True, num_examples=int(len(y)), folds=n_splits, sources=names.tolist(),
      counts=per_source.tolist(),
      accuracy=float(np.mean(pred == y)),
      majority_accuracy=float(per_source.max() / len(y)),
      balanced_accuracy=float(skm.balanced_accuracy_score(y, pred)),
      chance_balanced_accuracy=float(1.0 / len(names)),
      recall={n: float(confusion[k, k] / per_source[k]) for k, n in enumerate(names)},
      confusion_matrix=confusion.tolist())


def source_probes(run, *, reference: bool = True) -> dict:
  """Source recognition from the kept model's features and (reference=True) from ImageNet's,
  every labelled image of a `run.LoadedRun`."""
  from cxr_jax import weights
  from cxr_jax.evaluate.run import LABELLED

  meta = run.built.metadata

  def probe(variables, key):
    feats, got = run.features(LABELLED, variables, key)
    return source_recognition(feats, meta["source"][got], meta["patient_group"][got],
                              seed=int(run.trained.config.seed))

  variables = run.variables
  result = {"images": "every labelled image of the run's data (all splits)",
            "kept_model": probe(variables, "kept_model")}
  if not reference:
    return result
  arch = run.trained.config.model.arch
  try:
    pre = weights.load_pretrained(arch, source=run.trained.config.model.get("weights_source") or None)
  except Exception as e:  # noqa: BLE001 - the reference is optional; say why it is missing
    result["imagenet"] = dict(defined=False, why=f"ImageNet {arch} weights unavailable: {e}")
    return result
  if pre.preprocessing != run.trained.preprocessing:
    result["imagenet"] = dict(defined=False, why=f"ImageNet weights expect {pre.preprocessing} "
                              f"normalisation, the run used {run.trained.preprocessing}")
    return result
  reference = dict(variables, params=weights.merge_pretrained(variables["params"], pre.params))
  if pre.batch_stats:
    reference["batch_stats"] = weights.merge_pretrained(variables["batch_stats"], pre.batch_stats)
  result["imagenet"] = probe(reference, "imagenet")
  return result
