"""Splits stratified by (source, label): every cell in every split, named when it cannot be."""

import numpy as np
import pytest

from cxr_jax.config import get_config
from cxr_jax.data import splits
from cxr_jax.data.records import LABELS


def data_config(**overrides):
  d = get_config().data
  for key, value in overrides.items():
    setattr(d, key, value)
  return d


def metadata(cells, images_per_group=2, seed=0):
  """cells: {(source, label): patient groups}; each group holds 1..images_per_group images."""
  rng = np.random.default_rng(seed)
  rows = []
  for (source, label), groups in cells.items():
    for g in range(groups):
      for _ in range(rng.integers(1, images_per_group + 1)):
        rows.append((LABELS.index(label), f"{source}:{label}{g}", source))
  labels, groups, sources = zip(*rows, strict=True)
  return {"id": np.arange(len(rows)), "label": np.array(labels),
          "patient_group": np.array(groups), "source": np.array(sources),
          "file": np.array([f"f{i}.jpg" for i in range(len(rows))])}


# One large source per label (the confound) and a small one holding two labels: stratifying by
# label alone can leave the small source's minority label out of a split.
CELLS = {("big-covid", "covid"): 200, ("big-normal", "normal"): 200, ("big-pn", "pneumonia"): 200,
         ("two", "covid"): 12, ("two", "normal"): 6, ("kids", "normal"): 10,
         ("kids", "pneumonia"): 10}


def present(md, ids):
  return {(s, label) for s, table in splits.cell_table(md, ids).items() for label in table}


@pytest.mark.parametrize("seed", range(5))
def test_every_cell_in_every_split_and_no_patient_in_two(seed):
  md = metadata(CELLS, seed=seed)
  out = splits.make_splits(md, data_config(stratify="source_label", split_seed=seed))
  for name in ("train", "val", "test"):
    assert present(md, out[name]) == set(CELLS), name
  assert splits.missing_cells(md, out) == []
  groups = {n: set(md["patient_group"][out[n]]) for n in ("train", "val", "test")}
  assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
              or groups["val"] & groups["test"])
  # Every labelled image is in exactly one split.
  taken = np.sort(np.concatenate([out[n] for n in ("train", "val", "test")]))
  assert np.array_equal(taken, md["id"])


def test_label_stratification_can_miss_a_cell_and_names_it():
  md = metadata(CELLS)
  missed = [seed for seed in range(20) if splits.missing_cells(
      md, splits.make_splits(md, data_config(split_seed=seed)))]
  assert missed, "label stratification never lost a small cell: the fixture tests nothing"
  for seed in missed:
    assert not splits.missing_cells(
        md, splits.make_splits(md, data_config(stratify="source_label", split_seed=seed)))


def test_a_cell_too_small_for_every_split_is_named():
  md = metadata({**CELLS, ("tiny", "pneumonia"): 1, ("tiny", "covid"): 20}, images_per_group=1)
  out = splits.make_splits(md, data_config(stratify="source_label"))
  missing = splits.missing_cells(md, out)
  assert len(missing) == 1 and missing[0].startswith("tiny/pneumonia: not in ")
  assert missing[0].endswith("(1 patient group(s))")
  # It is in one split, not dropped.
  assert sum(("tiny", "pneumonia") in present(md, out[n]) for n in ("train", "val", "test")) == 1


def test_held_out_source_is_in_no_split_and_not_called_missing():
  md = metadata(CELLS)
  out = splits.make_splits(md, data_config(stratify="source_label", held_out_source="kids"))
  for name in ("train", "val", "test"):
    assert "kids" not in set(md["source"][out[name]])
  assert set(md["source"][out["held_out"]]) == {"kids"}
  assert splits.missing_cells(md, out) == []


def test_label_stratification_is_the_default_and_unknown_values_are_refused():
  assert get_config().data.stratify == "label"
  md = metadata(CELLS)
  with pytest.raises(ValueError, match="data.stratify='source'"):
    splits.make_splits(md, data_config(stratify="source"))


def test_cell_table_counts():
  md = metadata({("a", "covid"): 3, ("a", "normal"): 2}, images_per_group=1)
  assert splits.cell_table(md, md["id"]) == {"a": {"covid": 3, "normal": 2}}
