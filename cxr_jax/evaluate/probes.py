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


def last_stage(model) -> str:
  """The backbone's last block (VGG block5, DenseNet stage5): what the head reads."""
  from cxr_jax.models.densenet import STAGE_NAMES
  from cxr_jax.models.vgg import BLOCK_NAMES

  names = STAGE_NAMES if type(model).__name__.startswith("DenseNet") else BLOCK_NAMES
  return names[-1]


def make_feature_fn(model):
  """A jitted fn(variables, images) -> [N, C] float32: the last block's output, averaged over
  space (the representation every head starts from, whatever its kind)."""
  import jax
  import jax.numpy as jnp

  stop = last_stage(model)

  @jax.jit
  def features(variables, images):
    x = model.apply(variables, images, train=False, stop=stop)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  return features


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
