"""Leave-one-source-out: the held-out source never reaches training; --mode=loso's runs and table."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from cxr_jax import checkpoint, data, evaluate, experiments, models
from cxr_jax.data.records import LABELS


def _manifest_metadata(root):
  """Metadata arrays of cxr3 straight from its manifest (no images needed for the splits)."""
  with open(root / "manifest.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return {"id": np.arange(len(rows)), "label": np.array([LABELS.index(r["label"]) for r in rows]),
          "patient_group": np.array([r["patient_group"] for r in rows]),
          "source": np.array([r["source"] for r in rows])}


@pytest.mark.parametrize("source", ["ieee8023", "hannover", "nih-chestxray14"])
def test_held_out_source_leaves_training_and_keeps_the_rest_of_the_splits(cxr3_root, source):
  meta = _manifest_metadata(cxr3_root)
  config = default.get_config().data
  base = data.make_splits(meta, config)
  config.held_out_source = source
  got = data.make_splits(meta, config)
  held_groups = set(meta["patient_group"][meta["source"] == source])
  for name in ("train", "val", "test"):
    assert not held_groups & set(meta["patient_group"][got[name]]), name
    # Everything else keeps its split: the rest's test split is the usual one minus the source.
    expected = base[name][~np.isin(meta["patient_group"][base[name]], list(held_groups))]
    np.testing.assert_array_equal(got[name], expected)
  np.testing.assert_array_equal(got["held_out"], np.flatnonzero(meta["source"] == source))
  # Those patients' images in other sources (the same person in two collections) are nowhere.
  elsewhere = np.isin(meta["patient_group"], list(held_groups)) & (meta["source"] != source)
  total = sum(len(got[n]) for n in ("train", "val", "test", "held_out"))
  assert total + elsewhere.sum() == sum(len(base[n]) for n in ("train", "val", "test"))


def test_an_unknown_held_out_source_names_the_known_ones(cxr3_root):
  config = default.get_config().data
  config.held_out_source = "ieee"
  with pytest.raises(ValueError, match=r"'ieee' is not a source.*'ieee8023'"):
    data.make_splits(_manifest_metadata(cxr3_root), config)


def test_loso_mode_trains_one_run_per_source_and_tabulates_the_held_out_images(
    cxr3_root, tmp_path, subset_manifest):
  folder, picked = subset_manifest(cxr3_root / "manifest.csv", tmp_path / "cxr3-small", 6)
  counts = {}
  for row in picked:
    counts[(row["source"], row["label"])] = counts.get((row["source"], row["label"]), 0) + 1
  config = default.get_config()
  config.data.sources = (f"manifest:{folder}",)
  config.data.image_size = 48
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.num_folds = 2
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  config.eval.num_bootstrap = 10
  config.experiment.num_folds = 1
  config.experiment.loso_sources = "hannover,ieee8023"
  trained_on = {}

  def fake_train(run_config, workdir):
    """Records what training would see, saves a random model and evaluates it like the trainer."""
    built = data.build_dataset(run_config.data)
    ids = data.make_splits(built.metadata, run_config.data)["train"]
    trained_on[run_config.data.held_out_source] = set(built.metadata["source"][ids])
    model = models.create_model(run_config.model)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 48, 48, 3))))(jax.random.key(0))
    checkpoint.save_trained(workdir, run_config, {"params": variables["params"]}, "torchvision")
    evaluate.evaluate_workdir(workdir, "test", run_config)
    experiments.loso.held_out_metrics(run_config, workdir)

  doc = experiments.run_loso(config, tmp_path / "loso", train_fn=fake_train)

  assert trained_on.keys() == {"hannover", "ieee8023"}
  for source, seen in trained_on.items():
    assert source not in seen and len(seen) >= 3
  by_source = {r["held_out_source"]: r for r in doc["rows"]}
  assert by_source["hannover"]["images"] == counts[("hannover", "covid")]
  ieee = by_source["ieee8023"]
  assert ieee["images"] == sum(n for (s, _), n in counts.items() if s == "ieee8023")
  held = json.loads((tmp_path / "loso" / "runs" / "without_ieee8023_fold0" / "eval_held_out" /
                     "metrics.json").read_text())
  assert set(held["by_source"]) == {"ieee8023"}
  assert ieee["accuracy"] == pytest.approx(held["accuracy"])
  assert by_source["hannover"]["covid_auc"] is None  # COVID only: undefined, not made up
  text = (tmp_path / "loso" / "loso.md").read_text()
  assert "| hannover |" in text and "| ieee8023 |" in text
  # Started again: nothing trains, the same table.
  again = experiments.run_loso(config, tmp_path / "loso", train_fn=fake_train)
  assert set(again["status"].values()) == {"skipped"} and again["rows"] == doc["rows"]
