"""Twice transfer on real cxr3 (tiny DenseNet, 48 px): stage 1 on NIH findings never sees a COVID
test patient; stage 2 starts from stage 1's kept model; output neuron keeping copies exactly the
mapped neurons; one command writes the comparison."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from cxr_jax import checkpoint, data
from cxr_jax.data.findings import FINDINGS
from cxr_jax.data.records import LABELS
from cxr_jax.experiments import runner, twice
from cxr_jax.train import trainer
from tests.test_train_densenet import densenet_config

pytestmark = pytest.mark.usefixtures("tiny_densenet")


def twice_config():
  c = densenet_config(num_epochs=1, steps=2)
  c.data.balance = False
  c.model.keep_neurons = ("pneumonia:Pneumonia", "normal:No Finding")
  c.experiment.stage1 = ml_collections.ConfigDict({"num_epochs": 2})
  return c


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("twice")
  doc = twice.run_twice_transfer(twice_config(), workdir)
  return workdir, doc


def test_one_command_trains_stage1_and_the_variants_and_writes_the_comparison(experiment):
  workdir, doc = experiment
  assert doc["status"] == {"stage1_fold0": "trained", "single_fold0": "trained",
                           "twice_fold0": "trained", "twice_onk_fold0": "trained"}
  stage1 = json.loads((workdir / "runs/stage1_fold0/metrics.json").read_text())
  assert stage1["task"] == "findings" and set(stage1["per_finding"]) == set(FINDINGS)
  assert stage1["num_defined"] > 0 and 0 <= stage1["mean_auc"] <= 1
  assert len(json.loads((workdir / "runs/stage1_fold0/history.json").read_text())) == 2
  table = (workdir / "twice_transfer.md").read_text()
  assert all(f"| {v} |" in table for v in twice.VARIANTS)
  assert (workdir / "learning_curves.png").stat().st_size > 0
  # Started again, nothing is trained twice.
  again = twice.run_twice_transfer(twice_config(), workdir)
  assert set(again["status"].values()) == {"skipped"}


def test_an_external_set_added_later_is_scored_for_every_stage2_run(experiment, tmp_path,
                                                                   subset_manifest):
  from cxr_jax import paths

  workdir, _ = experiment
  ext, _ = subset_manifest(paths.default_data_root().parent / "cxr-external" / "manifest.csv",
                           tmp_path / "ext-small", 2)
  c = twice_config()
  c.eval.external = (f"manifest:{ext}",)
  doc = twice.run_twice_transfer(c, workdir)   # nothing retrained: the new set is scored
  assert set(doc["status"].values()) == {"skipped"}
  for variant in twice.VARIANTS:
    assert (workdir / "runs" / f"{variant}_fold0" / "external" / "ext-small" / "metrics.json").is_file()
  assert not (workdir / "runs" / "stage1_fold0" / "external").exists()
  table = (workdir / "twice_transfer.md").read_text()
  assert "## External sets" in table
  assert all(f"| {v} | 0 | ext-small | kermany-test |" in table for v in twice.VARIANTS)


def test_stage1_never_sees_a_covid_test_patient():
  config = twice.stage1_config(twice_config())
  s = trainer.setup(config)
  covid_test = data.make_splits(s.built.metadata, twice_config().data)["test"]
  test_groups = set(s.built.metadata["patient_group"][covid_test])
  used = np.concatenate([s.split_ids[k] for k in ("train", "val", "test")])
  assert len(used) > 0 and not test_groups & set(s.built.metadata["patient_group"][used])
  assert set(s.built.metadata["source"][used]) == {"nih-chestxray14"}


def test_stage2_starts_from_stage1_and_keeps_exactly_the_mapped_neurons(experiment):
  workdir, _ = experiment
  stage1_dir = workdir / "runs/stage1_fold0"
  old = jax.tree.map(np.asarray, checkpoint.load_trained(stage1_dir).variables)
  start = {v: jax.tree.map(np.asarray, trainer.setup(
      twice.variant_config(twice_config(), v, stage1_dir)).state) for v in twice.VARIANTS}
  for v in ("twice", "twice_onk"):
    for name in old["params"]:
      if name != "head":
        jax.tree.map(np.testing.assert_array_equal, start[v].params[name], old["params"][name])
    jax.tree.map(np.testing.assert_array_equal, start[v].batch_stats, old["batch_stats"])
  # Without keeping, the head is the fresh one (as in single transfer); with it, the pneumonia and
  # normal columns are stage 1's Pneumonia and No Finding columns and the covid one stays fresh.
  fresh = start["single"].params["head"]["logits"]
  jax.tree.map(np.testing.assert_array_equal, start["twice"].params["head"]["logits"], fresh)
  kept = start["twice_onk"].params["head"]["logits"]
  old_logits = old["params"]["head"]["logits"]
  for new_name, old_name in (("pneumonia", "Pneumonia"), ("normal", "No Finding")):
    k, j = LABELS.index(new_name), FINDINGS.index(old_name)
    np.testing.assert_array_equal(kept["kernel"][:, k], old_logits["kernel"][:, j])
    np.testing.assert_array_equal(kept["bias"][k], old_logits["bias"][j])
  covid = LABELS.index("covid")
  np.testing.assert_array_equal(kept["kernel"][:, covid], fresh["kernel"][:, covid])
  np.testing.assert_array_equal(kept["bias"][covid], fresh["bias"][covid])
  assert not np.array_equal(fresh["kernel"], kept["kernel"])
  assert "stage1_fold0" in json.loads(
      (workdir / "runs/twice_onk_fold0/versions.json").read_text())["weights"]


def test_a_findings_run_is_refused_by_the_3_class_evaluation(experiment):
  from cxr_jax import evaluate

  workdir, _ = experiment
  with pytest.raises(ValueError, match="findings"):
    evaluate.evaluate_workdir(workdir / "runs/stage1_fold0")
  assert runner.is_finished(workdir / "runs/stage1_fold0")
