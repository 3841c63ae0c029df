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
    """Records what training would see, saves a random model and evaluates its test split."""
    built = data.build_dataset(run_config.data)
    ids = data.make_splits(built.metadata, run_config.data)["train"]
    trained_on[run_config.data.held_out_source] = set(built.metadata["source"][ids])
    model = models.create_model(run_config.model)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 48, 48, 3))))(jax.random.key(0))
    checkpoint.save_trained(workdir, run_config, {"params": variables["params"]}, "torchvision")
    evaluate.evaluate_workdir(workdir, "test", run_config)
    # The held-out source's evaluation, named in the run's config.eval.evaluators, is left to the
    # study: it computes a finished run's missing evaluations before the row.
    assert ("held_out" in run_config.eval.evaluators) == bool(run_config.data.held_out_source)

  doc = experiments.run_loso(config, tmp_path / "loso", train_fn=fake_train)

  # The reference run (every source) trains too; each other run without its source.
  assert trained_on.keys() == {"hannover", "ieee8023", ""}
  assert {"hannover", "ieee8023"} <= trained_on[""]
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
  # COVID only: no COVID AUC and no non-COVID share, not made up; its sensitivity is defined.
  assert "held_covid_auc" not in by_source["hannover"]
  assert "held_non_covid_called_covid" not in by_source["hannover"]
  assert by_source["hannover"]["held_covid_sensitivity"] == pytest.approx(held_hannover(tmp_path))
  # The same source as a seen collection: the reference run's test split.
  reference = json.loads((tmp_path / "loso" / "runs" / "all_sources_fold0" /
                          "metrics.json").read_text())
  seen = reference["within_source"]["ieee8023"]
  assert ieee["seen_images"] == seen["num_examples"]
  assert ieee["seen_covid_sensitivity"] == pytest.approx(seen["sensitivity"]["covid"])
  text = (tmp_path / "loso" / "loso.md").read_text()
  assert "| hannover |" in text and "| ieee8023 |" in text
  assert (tmp_path / "loso" / "loso.png").is_file()
  # Started again: nothing trains, the same table.
  again = experiments.run_loso(config, tmp_path / "loso", train_fn=fake_train)
  assert set(again["status"].values()) == {"skipped"} and again["rows"] == doc["rows"]


def held_hannover(tmp_path):
  held = json.loads((tmp_path / "loso" / "runs" / "without_hannover_fold0" / "eval_held_out" /
                     "metrics.json").read_text())
  return held["within_source"]["hannover"]["sensitivity"]["covid"]


def test_each_source_gets_only_the_figures_its_labels_define():
  from cxr_jax.evaluate.summary import within_source
  from cxr_jax.experiments.loso import defined_figures

  # Per source: labels, and the class each image is called (probabilities favour it).
  cases = {
      "covid-only": ([0, 0, 0, 0], [0, 0, 1, 2]),
      "kids": ([1, 1, 2, 2], [0, 1, 0, 2]),            # no COVID: share called COVID, N-vs-P AUC
      "two-labels": ([0, 0, 1, 1, 1], [0, 1, 0, 1, 1]),  # COVID and normal, no pneumonia
  }
  labels = np.concatenate([np.array(y) for y, _ in cases.values()])
  called = np.concatenate([np.array(c) for _, c in cases.values()])
  probs = np.full((len(labels), 3), 0.1)
  probs[np.arange(len(labels)), called] = 0.8
  sources = np.concatenate([[name] * len(y) for name, (y, _) in cases.items()])
  within = within_source(labels, probs, sources, LABELS)
  assert defined_figures(within["covid-only"]) == {"covid_sensitivity": 0.5}
  kids = defined_figures(within["kids"])
  assert kids.keys() == {"non_covid_called_covid", "normal_vs_pneumonia_auc"}
  assert kids["non_covid_called_covid"] == pytest.approx(0.5)
  two = defined_figures(within["two-labels"])
  assert two.keys() == {"covid_auc", "covid_sensitivity", "non_covid_called_covid"}
  assert two["covid_sensitivity"] == pytest.approx(0.5)
  assert two["non_covid_called_covid"] == pytest.approx(1 / 3)
  # COVID AUC by hand: covid scores {0.8, 0.1}, others {0.8, 0.1, 0.1}: pairs won 0.5+1+1+0+0.5+0.5
  assert two["covid_auc"] == pytest.approx(3.5 / 6)
