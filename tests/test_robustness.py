"""The robustness ablation (--mode=robustness): measures become runs with their overrides, every
finished run is probed, the table holds one row per run, a restart skips finished runs."""

import json

import pytest

from configs import default, quickstart, robust
from configs import robustness as robustness_config
from cxr_jax.experiments import robustness
from tests.test_audit import _HalvesSegmenter


def test_measures_become_runs_with_their_overrides():
  c = robustness_config.get_config("measures=baseline+group_dro+combined")
  c.experiment.combine = "group_dro,dann"
  runs = robustness.plan(c)
  assert [r.name for r in runs] == ["baseline_fold0", "group_dro_fold0", "combined_fold0"]
  base, dro, both = (r.config for r in runs)
  assert base.train.group_dro_step == 0 and base.train.dann_weight == 0
  assert dro.train.group_dro_step > 0 and dro.train.dann_weight == 0
  assert both.train.group_dro_step == dro.train.group_dro_step and both.train.dann_weight > 0
  assert all(r.config.data.fold == 0 for r in runs)
  # Everything but the overrides is the baseline's: one seed, one recipe.
  assert base.data.to_dict() == dro.data.to_dict() and base.model == dro.model


def test_robust_recipe_is_the_measured_combination():
  """configs/robust.py trains exactly the `combined` run of results/robustness_128px (lung crop +
  group DRO on the quick start), so its documented figures are its own."""
  c = robustness_config.get_config("measures=combined")
  c.experiment.combine = "lung_crop,group_dro"
  measured = robustness.plan(c)[0].config
  recipe = robust.get_config()
  assert recipe != quickstart.get_config()
  for section in ("data", "model", "train"):
    assert recipe[section].to_dict() == measured[section].to_dict(), section


@pytest.mark.parametrize("measures, combine, match", [
    ("baseline,nonsense", "", "unknown measure 'nonsense'"),
    ("baseline,baseline", "", "name each measure once"),
    ("combined", "", "needs config.experiment.combine"),
])
def test_bad_measure_lists_are_refused_before_training(measures, combine, match):
  c = default.get_config()
  c.experiment.measures, c.experiment.combine = measures, combine
  with pytest.raises(ValueError, match=match):
    robustness.plan(c)


def test_ablation_end_to_end_on_real_images(cxr3_root, tmp_path, subset_manifest, monkeypatch):
  data, _ = subset_manifest(cxr3_root / "manifest.csv", tmp_path / "cxr3-small", 8)
  c = default.get_config()
  c.data.sources = (f"manifest:{data}",)
  c.data.image_size = 48
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.num_folds = 2
  c.model.hidden = (8,)
  c.model.head = "gap"
  c.model.pretrained = "none"
  c.train.num_epochs = 1
  c.train.batch_size = 8
  c.train.learning_rate = 1e-4
  c.eval.num_bootstrap = 20
  c.experiment.num_folds = 1
  c.experiment.measures = "baseline,group_dro"
  trained = []

  # The lung probes' masks: halves of the image stand in for the stored segmenter.
  monkeypatch.setattr("cxr_jax.lungs.segment.default_segmenter", _HalvesSegmenter)

  def train_fn(config, workdir):
    from cxr_jax import train
    trained.append(workdir.name)
    assert set(robustness.EVALUATORS) <= set(config.eval.evaluators)
    train.train_and_evaluate(config, workdir)   # the trainer runs the probes and eval_val

  doc = robustness.run_robustness(c, tmp_path / "w", train_fn)
  assert trained == ["baseline_fold0", "group_dro_fold0"]
  assert [r["measure"] for r in doc["rows"]] == ["baseline", "group_dro"]
  for row in doc["rows"]:
    assert 0 <= row["test_accuracy"] <= 1 and row["val_loss"] is not None
    assert 0 <= row["val_accuracy"] <= 1
    assert row["lungs_blanked_accuracy"] is not None
    assert row["source_probe_balanced_accuracy"] is not None
  saved = json.loads((tmp_path / "w" / "runs" / "group_dro_fold0" / "config.json").read_text())
  assert saved["train"]["group_dro_step"] == robustness.MEASURES["group_dro"]["train.group_dro_step"]
  text = (tmp_path / "w" / "robustness.md").read_text()
  assert "| baseline (0) |" in text and "| group_dro (0) |" in text
  assert (tmp_path / "w" / "robustness.png").is_file()
  for run in trained:   # written by the trainer, read (not recomputed) by the table
    assert (tmp_path / "w" / "runs" / run / "eval_val" / "metrics.json").is_file()
    assert (tmp_path / "w" / "runs" / run / "robustness_probes.json").is_file()
  again = robustness.run_robustness(c, tmp_path / "w", train_fn)   # finished runs are skipped
  assert trained == ["baseline_fold0", "group_dro_fold0"]
  assert set(again["status"].values()) == {"skipped"}
