"""One JSON-able summary of a built dataset and its splits (what the command line prints)."""

from __future__ import annotations

import collections

import numpy as np

from cxr_jax.data.records import LABELS, NO_LABEL
from cxr_jax.data.splits import cell_table, missing_cells


def split_summary(metadata, ids: np.ndarray) -> dict:
  labels = metadata["label"][ids]
  counts = np.bincount(labels[labels != NO_LABEL], minlength=len(LABELS))
  images = {label: int(n) for label, n in zip(LABELS, counts, strict=True)}
  if np.any(labels == NO_LABEL):  # a findings split: images in none of the 3 classes
    images["no_label"] = int(np.sum(labels == NO_LABEL))
  images["total"] = int(len(ids))
  return dict(images=images, patient_groups=int(len(np.unique(metadata["patient_group"][ids]))),
              cells=cell_table(metadata, ids[labels != NO_LABEL]))


def summarize(built, splits: dict[str, np.ndarray], data_config) -> dict:
  """Images per split and label and per (source, label) cell, the cells some split lacks, patient
  groups per split, rejects, duplicates, exclusions."""
  excluded = collections.Counter(e["reason"] for e in built.excluded)
  return dict(
      dataset=built.version,
      data_dir=str(built.data_dir),
      image_size=built.image_size,
      num_examples=built.num_examples,
      fold=int(data_config.fold),
      num_folds=int(data_config.num_folds),
      split_seed=int(data_config.split_seed),
      stratify=str(data_config.get("stratify", "label")),
      splits={name: split_summary(built.metadata, ids) for name, ids in splits.items()},
      missing_cells=missing_cells(built.metadata, splits),
      rejected=built.rejects,
      duplicates=built.duplicates,
      excluded=dict(total=len(built.excluded), by_reason=dict(excluded.most_common())),
      report=str(built.report_path),
  )
