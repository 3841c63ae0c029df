"""Patient-grouped, label-stratified splits: test held out, then k folds for validation.

Every patient group goes wholly to one of test / fold 0..k-1, so no patient is on both sides.
Groups whose images carry two labels are stratified by their majority label. The assignment is
a pure function of the metadata and data_config.split_seed; fold, train_fraction and balance
only select from it, so changing them never moves a group between test and the rest.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.data.records import LABELS

# Independent random streams, so that e.g. the folds do not change with test_fraction's draw.
_TEST, _FOLDS, _FRACTION, _BALANCE = range(4)


def _group_table(metadata):
  """Sorted unique groups, each image's group index, group sizes and majority labels."""
  groups, image_group = np.unique(metadata["patient_group"], return_inverse=True)
  counts = np.zeros((len(groups), len(LABELS)), np.int64)
  np.add.at(counts, (image_group, metadata["label"]), 1)
  return groups, image_group, counts.sum(1), counts.argmax(1)  # argmax: ties -> lower label


def _take_fraction(order, sizes, fraction):
  """How many groups of `order` to take so their images come closest to fraction of all."""
  cumulative = np.cumsum(sizes[order])
  target = fraction * cumulative[-1] if len(cumulative) else 0
  return int(np.argmin(np.abs(np.concatenate([[0], cumulative]) - target)))


def assign_groups(metadata, data_config) -> np.ndarray:
  """Per patient group (sorted by name): -1 for test, else its fold 0..num_folds-1."""
  _, _, sizes, strata = _group_table(metadata)
  seed = int(data_config.split_seed)
  num_folds = max(int(data_config.num_folds), 1)
  assignment = np.zeros(len(sizes), np.int64)
  test_rng = np.random.default_rng([seed, _TEST])
  fold_rng = np.random.default_rng([seed, _FOLDS])
  for stratum in range(len(LABELS)):
    order = test_rng.permutation(np.flatnonzero(strata == stratum))
    num_test = _take_fraction(order, sizes, float(data_config.test_fraction))
    assignment[order[:num_test]] = -1
    # Greedy: each group joins the fold with the fewest images of this stratum so far.
    fold_images = np.zeros(num_folds, np.int64)
    for group in fold_rng.permutation(order[num_test:]):
      fold = int(np.argmin(fold_images))
      assignment[group] = fold
      fold_images[fold] += sizes[group]
  return assignment


def check_disjoint(metadata, splits: dict[str, np.ndarray]) -> None:
  """Raises AssertionError if a patient group has images in two splits (run on every split)."""
  names = [n for n in ("train", "val", "test") if n in splits]
  groups = {n: set(metadata["patient_group"][splits[n]]) for n in names}
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared = groups[a] & groups[b]
      if shared:
        raise AssertionError(f"Patient groups in both {a} and {b}: {sorted(shared)[:5]}")


def _subset_groups(ids, metadata, fraction, rng):
  """Keeps `fraction` of the patient groups of `ids`, per stratum, as a nested prefix."""
  if fraction >= 1.0:
    return ids
  sub = {k: v[ids] for k, v in metadata.items()}
  groups, image_group, sizes, strata = _group_table(sub)
  keep = np.zeros(len(groups), bool)
  for stratum in range(len(LABELS)):
    order = rng.permutation(np.flatnonzero(strata == stratum))
    count = int(np.ceil(fraction * len(order)))
    keep[order[:count]] = True
  return ids[keep[image_group]]


def _balance(ids, labels, rng):
  """Samples every class down to the smallest class's count (Lee et al.'s equal counts)."""
  per_class = [ids[labels[ids] == c] for c in range(len(LABELS))]
  smallest = min(len(p) for p in per_class)
  if smallest == 0:
    raise ValueError("Cannot balance: a class has no training images "
                     f"(counts {[len(p) for p in per_class]}).")
  return np.sort(np.concatenate([rng.choice(p, smallest, replace=False) for p in per_class]))


def make_splits(metadata, data_config) -> dict[str, np.ndarray]:
  """Example ids of train / val / test for data_config.fold (sorted int64 arrays).

  val is empty when num_folds <= 1. train_fraction keeps that share of the training patient
  groups (per stratum; a smaller fraction's groups are a subset of a larger one's), and balance
  then samples the training images to equal counts per class.
  """
  num_folds = int(data_config.num_folds)
  fold = int(data_config.fold)
  if num_folds > 1 and not 0 <= fold < num_folds:
    raise ValueError(f"data.fold={fold} is outside 0..num_folds-1 ({num_folds} folds).")
  if not 0.0 < float(data_config.train_fraction) <= 1.0:
    raise ValueError(f"data.train_fraction={data_config.train_fraction} must be in (0, 1].")
  ids = np.asarray(metadata["id"], np.int64)
  _, image_group, _, _ = _group_table(metadata)
  image_fold = assign_groups(metadata, data_config)[image_group]
  is_val = (image_fold == fold) if num_folds > 1 else np.zeros(len(ids), bool)
  splits = dict(train=ids[(image_fold >= 0) & ~is_val], val=ids[is_val], test=ids[image_fold < 0])
  seed = int(data_config.split_seed)
  splits["train"] = _subset_groups(splits["train"], metadata, float(data_config.train_fraction),
                                   np.random.default_rng([seed, _FRACTION, fold]))
  if data_config.balance:
    splits["train"] = _balance(splits["train"], np.asarray(metadata["label"]),
                               np.random.default_rng([seed, _BALANCE, fold]))
  check_disjoint(metadata, splits)
  return splits
