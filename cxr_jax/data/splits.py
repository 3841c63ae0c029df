"""Patient-grouped, stratified splits: test held out, then k folds for validation.

Every patient group goes wholly to one of test / fold 0..k-1, so no patient is on both sides.
The 3-class splits (make_splits) are stratified by label (data.stratify="label"), or by the
(source, label) cell ("source_label", for data where a collection holds several labels: every
split then holds every cell that has enough patient groups, and the cells that do not are named by
missing_cells); a group whose images carry two strata goes by its majority stratum; examples without a 3-class label (NO_LABEL: ChestX-ray14 images with
neither "No Finding" nor "Pneumonia") are in none of them. The splits of the findings stage of
twice transfer (make_findings_splits) take the ChestX-ray14 examples minus the patient groups of
the 3-class test split, stratified by "No Finding". An assignment is a pure function of the
metadata and data_config.split_seed; fold, train_fraction and balance only select from it, so
changing them never moves a group between test and the rest.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.data.findings import NO_FINDING, multi_hot
from cxr_jax.data.readers import NIH_SOURCE
from cxr_jax.data.records import LABELS, NO_LABEL

# Independent random streams, so that e.g. the folds do not change with test_fraction's draw.
_TEST, _FOLDS, _FRACTION, _BALANCE = range(4)


def _group_table(groups, strata, num_strata):
  """Sorted unique groups, each image's group index, group sizes and majority strata."""
  names, image_group = np.unique(groups, return_inverse=True)
  counts = np.zeros((len(names), num_strata), np.int64)
  np.add.at(counts, (image_group, strata), 1)
  return names, image_group, counts.sum(1), counts.argmax(1)  # argmax: ties -> lower stratum


def _strata(metadata, ids, data_config) -> tuple[np.ndarray, int]:
  """Per example (indexed by id): its stratum, and the number of strata, for data.stratify."""
  labels = np.asarray(metadata["label"])
  how = str(data_config.get("stratify", "label"))
  if how == "label":
    return labels, len(LABELS)
  if how != "source_label":
    raise ValueError(f"data.stratify={how!r}: use 'label' or 'source_label'.")
  # Only the labelled examples' cells count, so the strata do not move with unlabelled images.
  sources = np.asarray(metadata["source"])
  names = sorted(set(sources[ids].tolist()))
  source_index = np.searchsorted(names, sources)
  source_index[~np.isin(sources, names)] = 0   # unlabelled-only sources: never in ids
  return source_index * len(LABELS) + np.maximum(labels, 0), len(names) * len(LABELS)


def cell_table(metadata, ids: np.ndarray) -> dict[str, dict[str, int]]:
  """Images per (source, label) cell of the examples `ids`: {source: {label: count}}."""
  sources = np.asarray(metadata["source"])[ids]
  labels = np.asarray(metadata["label"])[ids]
  table: dict[str, dict[str, int]] = {}
  for source in sorted(set(sources.tolist())):
    in_source = labels[sources == source]
    table[source] = {name: int(np.sum(in_source == i)) for i, name in enumerate(LABELS)
                     if np.any(in_source == i)}
  return table


def missing_cells(metadata, splits: dict[str, np.ndarray]) -> list[str]:
  """The (source, label) cells of the labelled examples that some of train / val / test lack,
  e.g. "figure1/pneumonia: not in val, test (1 patient group)". A held-out source is not
  missing from the splits it was taken out of; an empty split (val with one fold) is skipped."""
  names = [n for n in ("train", "val", "test") if n in splits and len(splits[n])]
  every = np.concatenate([splits[n] for n in names]) if names else np.zeros(0, np.int64)
  groups = np.asarray(metadata["patient_group"])
  tables = {n: cell_table(metadata, splits[n]) for n in names}
  out = []
  for source, counts in cell_table(metadata, every).items():
    for label in counts:
      lacking = [n for n in names if not tables[n].get(source, {}).get(label)]
      if lacking:
        cell = every[(np.asarray(metadata["source"])[every] == source)
                     & (np.asarray(metadata["label"])[every] == LABELS.index(label))]
        out.append(f"{source}/{label}: not in {', '.join(lacking)} "
                   f"({len(np.unique(groups[cell]))} patient group(s))")
  return out


def _labels(metadata) -> np.ndarray:
  """The 3-class labels; NO_LABEL would silently index the last class, so it is refused."""
  labels = np.asarray(metadata["label"])
  if np.any(labels == NO_LABEL):
    raise ValueError(f"{np.sum(labels == NO_LABEL)} example(s) have no 3-class label "
                     f"(label {NO_LABEL}); make_splits leaves them out, use it.")
  return labels


def _take_fraction(order, sizes, fraction):
  """How many groups of `order` to take so their images come closest to fraction of all."""
  cumulative = np.cumsum(sizes[order])
  target = fraction * cumulative[-1] if len(cumulative) else 0
  return int(np.argmin(np.abs(np.concatenate([[0], cumulative]) - target)))


def assign_groups(metadata, data_config) -> np.ndarray:
  """Per patient group (sorted by name): -1 for test, else its fold 0..num_folds-1."""
  _labels(metadata)  # refuses unlabelled examples
  strata, num_strata = _strata(metadata, np.asarray(metadata["id"], np.int64), data_config)
  _, _, sizes, group_strata = _group_table(metadata["patient_group"], strata, num_strata)
  return _assign(sizes, group_strata, num_strata, data_config)


def _assign(sizes, strata, num_strata, data_config) -> np.ndarray:
  """assign_groups on a group table (sizes and majority strata per group)."""
  seed = int(data_config.split_seed)
  num_folds = max(int(data_config.num_folds), 1)
  assignment = np.zeros(len(sizes), np.int64)
  test_rng = np.random.default_rng([seed, _TEST])
  fold_rng = np.random.default_rng([seed, _FOLDS])
  for stratum in range(num_strata):
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
  names = [n for n in ("train", "val", "test", "held_out") if n in splits]
  groups = {n: set(metadata["patient_group"][splits[n]]) for n in names}
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared = groups[a] & groups[b]
      if shared:
        raise AssertionError(f"Patient groups in both {a} and {b}: {sorted(shared)[:5]}")


def check_within(metadata, splits: dict[str, np.ndarray], ids, split: str = "train") -> None:
  """Raises AssertionError unless every example of `ids` is in `splits[split]` and no patient
  group of them has an image in another split: what is fitted on the training split (the
  out-of-distribution scores) sees nothing of validation, test or a held-out source."""
  ids = np.asarray(ids)
  outside = np.setdiff1d(ids, np.asarray(splits[split]))
  if len(outside):
    raise AssertionError(f"{len(outside)} example(s) outside the {split} split: "
                         f"{outside[:5].tolist()}")
  check_disjoint(metadata, {**splits, split: ids})


def _subset_groups(ids, groups, strata, num_strata, fraction, rng):
  """Keeps `fraction` of the patient groups of `ids`, per stratum, as a nested prefix; groups
  and strata are indexed by example id."""
  if fraction >= 1.0:
    return ids
  names, image_group, _, group_strata = _group_table(groups[ids], strata[ids], num_strata)
  keep = np.zeros(len(names), bool)
  for stratum in range(num_strata):
    order = rng.permutation(np.flatnonzero(group_strata == stratum))
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


def _check_folds(data_config) -> tuple[int, int]:
  """(num_folds, fold), after checking fold and train_fraction."""
  num_folds = int(data_config.num_folds)
  fold = int(data_config.fold)
  if num_folds > 1 and not 0 <= fold < num_folds:
    raise ValueError(f"data.fold={fold} is outside 0..num_folds-1 ({num_folds} folds).")
  if not 0.0 < float(data_config.train_fraction) <= 1.0:
    raise ValueError(f"data.train_fraction={data_config.train_fraction} must be in (0, 1].")
  return num_folds, fold


def _grouped_splits(ids, groups, strata, num_strata, data_config) -> dict[str, np.ndarray]:
  """train / val / test of the examples `ids` by whole patient groups, stratified, train cut to
  data_config.train_fraction; groups and strata are indexed by example id."""
  num_folds, fold = _check_folds(data_config)
  _, image_group, sizes, group_strata = _group_table(groups[ids], strata[ids], num_strata)
  image_fold = _assign(sizes, group_strata, num_strata, data_config)[image_group]
  is_val = (image_fold == fold) if num_folds > 1 else np.zeros(len(ids), bool)
  splits = dict(train=ids[(image_fold >= 0) & ~is_val], val=ids[is_val], test=ids[image_fold < 0])
  rng = np.random.default_rng([int(data_config.split_seed), _FRACTION, fold])
  splits["train"] = _subset_groups(splits["train"], groups, strata, num_strata,
                                   float(data_config.train_fraction), rng)
  return splits


def make_splits(metadata, data_config) -> dict[str, np.ndarray]:
  """Example ids of train / val / test for data_config.fold (sorted int64 arrays).

  Only examples with a 3-class label take part (NO_LABEL ones are in no split), stratified as
  data_config.stratify says. val is empty when num_folds <= 1. train_fraction keeps that share of the training patient groups (per
  stratum; a smaller fraction's groups are a subset of a larger one's), and balance then samples
  the training images to equal counts per class.
  """
  labels = np.asarray(metadata["label"])
  ids = np.asarray(metadata["id"], np.int64)[labels != NO_LABEL]
  strata, num_strata = _strata(metadata, ids, data_config)
  splits = _grouped_splits(ids, np.asarray(metadata["patient_group"]), strata, num_strata,
                           data_config)
  held = str(data_config.get("held_out_source", "") or "")
  if held:
    splits = hold_out_source(metadata, splits, ids, held)
  fold, seed = int(data_config.fold), int(data_config.split_seed)
  if data_config.balance:
    splits["train"] = _balance(splits["train"], labels,
                               np.random.default_rng([seed, _BALANCE, fold]))
  check_disjoint(metadata, splits)
  return splits


def hold_out_source(metadata, splits, ids, source: str) -> dict[str, np.ndarray]:
  """Takes every patient group holding an image of `source` out of train / val / test; the
  source's labelled images form "held_out" (those patients' images in other sources, e.g. the same
  file in two collections, are in no split). The remaining images keep their splits, so the rest's
  test split is the usual one minus those patients."""
  sources = np.asarray(metadata["source"])
  known = sorted(set(sources[ids].tolist()))
  if source not in known:
    raise ValueError(f"data.held_out_source={source!r} is not a source of the data; its sources: "
                     f"{known}")
  groups = np.asarray(metadata["patient_group"])
  held_groups = set(groups[ids][sources[ids] == source].tolist())
  is_held = np.array([g in held_groups for g in groups], bool)
  out = {name: split[~is_held[split]] for name, split in splits.items()}
  out["held_out"] = ids[sources[ids] == source]
  check_excluded(metadata, {k: out[k] for k in ("train", "val", "test")}, held_groups,
                 where=f"leave-{source}-out")
  return out


def held_out_groups(metadata, data_config) -> np.ndarray:
  """Sorted patient groups of the 3-class test split of data_config: the groups the findings
  stage must never see (make_findings_splits' exclude_groups)."""
  return np.unique(np.asarray(metadata["patient_group"])[make_splits(metadata, data_config)["test"]])


# The trainer's name for it. held_out_groups is the main name and __test__ is False because pytest
# would collect a test_* function imported into a test module.
held_out_groups.__test__ = False
test_groups = held_out_groups


def findings_examples(metadata) -> np.ndarray:
  """Ids of the findings task's examples: ChestX-ray14 ones with a findings string."""
  keep = ((np.asarray(metadata["source"]) == NIH_SOURCE)
          & (np.asarray(metadata["findings"]) != ""))
  return np.asarray(metadata["id"], np.int64)[keep]


def check_excluded(metadata, splits: dict[str, np.ndarray], exclude_groups,
                   where: str = "findings") -> None:
  """Raises AssertionError if a split holds an example of an excluded patient group."""
  exclude = set(exclude_groups)
  for name, ids in splits.items():
    leaked = exclude.intersection(np.asarray(metadata["patient_group"])[ids])
    if leaked:
      raise AssertionError(f"Excluded patient groups in the {where} {name} split: "
                           f"{sorted(leaked)[:5]}")


def make_findings_splits(metadata, data_config, exclude_groups) -> dict[str, np.ndarray]:
  """Example ids of train / val / test of the findings stage (sorted int64 arrays).

  Takes findings_examples(metadata), leaves out every example whose patient group is in
  exclude_groups (pass held_out_groups(metadata, covid_data_config), so that the findings stage
  never sees a patient of the 3-class test split), and splits the rest like make_splits
  (test_fraction, num_folds, fold, split_seed, train_fraction), stratified by "No Finding".

  Raises:
    ValueError: data_config.balance is set (multi-label targets have no class counts to
      equalise), or a findings string is not made of ChestX-ray14 findings.
    AssertionError: an excluded patient group, or a patient group in two splits.
  """
  if data_config.balance:
    raise ValueError("data.balance=True has no meaning for the multi-label findings stage; "
                     "set it False in that stage's data config.")
  ids = findings_examples(metadata)
  findings = np.asarray(metadata["findings"])
  multi_hot(findings[ids], where=[f"example {i} ({metadata['file'][i]})" for i in ids])
  groups = np.asarray(metadata["patient_group"])
  exclude = set(exclude_groups)
  ids = ids[np.array([g not in exclude for g in groups[ids]], bool)]
  no_finding = (findings == NO_FINDING).astype(np.int64)
  splits = _grouped_splits(ids, groups, no_finding, 2, data_config)
  check_excluded(metadata, splits, exclude)
  check_disjoint(metadata, splits)
  return splits
