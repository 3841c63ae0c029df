"""Experiments: a tiny real ablation (kill and restart), CV/sweep outputs, grids, data fractions."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from configs import ablation, smoke
from configs.sweeps import data_fraction, mixup, resolution
from cxr_jax import checkpoint, data, evaluate, train
from cxr_jax.evaluate import workdir as evaluate_workdir_module
from cxr_jax.experiments import ExperimentIncomplete, grid, plan, run_experiment, runner
from cxr_jax.train import trainer

REPO = Path(__file__).resolve().parent.parent
TINY_GRID = "model.arch=vgg16,vgg19;model.trainable_blocks=0,2"


def write_manifest(root: Path, per_class: int = 16) -> Path:
  """A generated cxr3-style source: per_class images per class, some patients with two images."""
  rng = np.random.default_rng(0)
  rows = []
  for c, label in enumerate(data.LABELS):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      image = np.clip(rng.normal(70 + 50 * c, 30, (56, 52)), 0, 255).astype(np.uint8)
      cv2.imwrite(str(root / f"{label}/img{i}.png"), image)
      group = f"p{c}_{i // 2 if i < 8 else i}"
      rows.append(dict(file=f"{label}/img{i}.png", label=label, patient_id=group,
                       patient_group=group, source="gen"))
  with open(root / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return root


def tiny_config(root: Path):
  """Smoke-sized runs on the generated source: 48 px, 2 folds, 2 epochs of 1 step."""
  c = smoke.get_config()
  c.data.sources = (f"manifest:{root / 'src'}",)
  c.data.data_dir = str(root / "tfds")
  c.data.test_fraction = 0.25
  c.data.num_folds = 2
  c.model.hidden = (8,)
  c.train.batch_size = 4
  c.train.eval_batch_size = 16
  c.train.num_epochs = 2
  c.train.steps_per_epoch = 1
  c.eval.num_bootstrap = 20
  c.experiment.grid = TINY_GRID
  return c


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  write_manifest(root / "src")
  return root


def no_plots(metrics, out):
  """Each run's ROC/PR/... figures cost seconds and are tested with evaluation; not needed here."""
  return {}


@pytest.fixture(scope="module")
def tiny_ablation(tiny_root, tmp_path_factory):
  """The 2 archs x 2 degrees x 2 folds ablation, killed in its third run and started again.

  Returns (workdir, names of the runs trained by the second start, run dirs resumed from a
  checkpoint, mtimes of the metrics.json files written before the kill).
  """
  workdir = tmp_path_factory.mktemp("ablation")
  config = tiny_config(tiny_root)
  calls = []
  real_prepare = trainer._prepare_batch

  def dying_prepare(s, batch, epoch, step):
    if len(calls) == 3 and epoch == 1:     # the third run, after its first epoch's checkpoint
      raise KeyboardInterrupt("simulated kill")
    return real_prepare(s, batch, epoch, step)

  def counting_train(run_config, directory):
    calls.append(Path(directory).name)
    return train.train_and_evaluate(run_config, directory)

  with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
    mp.setattr(evaluate_workdir_module, "write_plots", no_plots)
    mp.setattr(trainer, "_prepare_batch", dying_prepare)
    run_experiment(config, workdir, "ablation", train_fn=counting_train)
  assert calls == ["vgg16_ft0_fold0", "vgg16_ft0_fold1", "vgg16_ft2_fold0"]
  runs_dir = workdir / runner.RUNS_DIR
  before = {n: (runs_dir / n / "metrics.json").stat().st_mtime_ns for n in calls[:2]}
  assert not (runs_dir / calls[2] / "metrics.json").exists()

  calls.clear()
  resumed = []
  real_restore = checkpoint.Checkpoints.restore_latest

  def recording_restore(self, target):
    out = real_restore(self, target)
    if out is not None:
      resumed.append((self.latest.directory.parent.parent.name, out[1]["epoch"]))
    return out

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(evaluate_workdir_module, "write_plots", no_plots)
    mp.setattr(checkpoint.Checkpoints, "restore_latest", recording_restore)
    doc = run_experiment(config, workdir, "ablation", train_fn=counting_train)
  return workdir, list(calls), resumed, before, doc


@pytest.mark.slow  # the 8 runs of the tiny ablation: ~2 min of CPU
def test_restart_skips_finished_runs_and_resumes_the_killed_one(tiny_ablation):
  workdir, trained, resumed, before, doc = tiny_ablation
  assert trained == ["vgg16_ft2_fold0", "vgg16_ft2_fold1", "vgg19_ft0_fold0", "vgg19_ft0_fold1",
                     "vgg19_ft2_fold0", "vgg19_ft2_fold1"]
  assert resumed == [("vgg16_ft2_fold0", 1)]          # from its epoch-0 checkpoint
  for name, mtime in before.items():                  # finished runs were not redone
    assert (workdir / "runs" / name / "metrics.json").stat().st_mtime_ns == mtime
  assert doc["status"]["vgg16_ft0_fold0"] == "skipped"
  assert json.loads((workdir / "status.json").read_text())["vgg19_ft2_fold1"] == "trained"
  history = json.loads((workdir / "runs/vgg16_ft2_fold0/history.json").read_text())
  assert [h["epoch"] for h in history] == [0, 1]


@pytest.mark.slow  # uses the tiny ablation's runs
def test_trainer_and_mode_evaluate_write_the_same_evaluation(tiny_ablation, tmp_path):
  """The trainer evaluates with the dataset and splits it holds, --mode=evaluate rebuilds them from
  the workdir: one evaluation code path, so the same numbers and the same predictions."""
  run = tiny_ablation[0] / "runs" / "vgg16_ft2_fold0"
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(evaluate_workdir_module, "write_plots", no_plots)
    again = evaluate.evaluate_workdir(run, "test", out_dir=tmp_path)
  saved = json.loads((run / "metrics.json").read_text())
  assert saved["num_examples"] == again["num_examples"] > 0
  assert saved["accuracy"] == again["accuracy"]
  assert saved["per_class"] == json.loads(json.dumps(again["per_class"]))
  assert (run / "predictions.csv").read_text() == (tmp_path / "predictions.csv").read_text()


@pytest.mark.slow  # the 8 runs of the tiny ablation: ~2 min of CPU
def test_ablation_outputs_are_consistent(tiny_ablation):
  workdir, _, _, _, doc = tiny_ablation
  for name in ("table2.csv", "table2.md", "figure5.png", "ablation.json"):
    assert (workdir / name).stat().st_size > 0, name
  saved = json.loads((workdir / "ablation.json").read_text())
  assert list(saved["groups"]) == ["vgg16_ft0", "vgg16_ft2", "vgg19_ft0", "vgg19_ft2"]
  for name, group in saved["groups"].items():
    assert group["folds"] == [0, 1] and group["values"]["model.arch"] == name.split("_")[0]
    accs, by_source = [], []
    for fold in (0, 1):
      metrics = json.loads((workdir / f"runs/{name}_fold{fold}/metrics.json").read_text())
      flat = group["per_fold"][str(fold)]
      assert flat["accuracy"] == metrics["accuracy"]
      per_class = metrics["per_class"]["covid"]
      assert flat["covid/accuracy"] == pytest.approx(
          (per_class["tp"] + per_class["tn"]) / metrics["num_examples"])
      accs.append(flat["covid/accuracy"])
      by_source.append(metrics["by_source"])
    for source, entry in group["by_source"].items():   # per-source means over the folds
      if source != "_source_only":
        assert entry["accuracy"] == pytest.approx(np.mean([b[source]["accuracy"] for b in by_source]))
    entry = group["summary"]["covid/accuracy"]
    assert entry["mean"] == pytest.approx(np.mean(accs))
    assert entry["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert entry["low"] <= entry["mean"] <= entry["high"]
  won = saved["winners"]
  means = {n: g["summary"]["accuracy"]["mean"] for n, g in saved["groups"].items()}
  assert means[won["by_test"]] == max(means.values())
  losses = {n: g["summary"]["val_loss"]["mean"] for n, g in saved["groups"].items()}
  assert losses[won["by_val_loss"]] == min(losses.values())

  with open(workdir / "table2.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 * 3
  row = next(r for r in rows if r["group"] == "vgg19_ft2" and r["class"] == "covid")
  assert float(row["accuracy"]) == pytest.approx(
      saved["groups"]["vgg19_ft2"]["summary"]["covid/accuracy"]["mean"])
  assert row["model.trainable_blocks"] == "2"
  text = (workdir / "table2.md").read_text()
  assert "| vgg16_ft2 | 2 | covid |" in text and f"**{won['by_test']}**" in text
  assert "## By source" in text and "from its source alone" in text


@pytest.mark.slow  # the 8 runs of the tiny ablation: ~2 min of CPU
def test_launch_ablation_on_a_finished_workdir_only_rewrites_outputs(tiny_ablation, tiny_root,
                                                                     tmp_path):
  workdir = tiny_ablation[0]
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
      "from pathlib import Path\nfrom tests.test_experiments import tiny_config\n\n\n"
      f"def get_config():\n  return tiny_config(Path({str(tiny_root)!r}))\n")
  (workdir / "figure5.png").unlink()
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run(
      [sys.executable, "launch.py", f"--config={config_file}", f"--workdir={workdir}",
       "--mode=ablation"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (workdir / "figure5.png").is_file()
  assert set(json.loads((workdir / "status.json").read_text()).values()) == {"skipped"}
  assert '"winners"' in out.stdout


# ---------------------------------------------------------------- runner logic with a fake trainer


def fake_train(accuracy_by_fold, fail=()):
  """A train_fn writing the files of a finished run: metrics of random predictions whose accuracy
  depends on the fold, and a history with val loss 1 - accuracy."""

  def train_fn(config, directory):
    directory = Path(directory)
    if directory.name in fail:
      raise FloatingPointError("loss is nan")
    checkpoint.write_run_info(directory, config, {})
    rng = np.random.default_rng(int(config.data.fold))
    labels = np.repeat(np.arange(3), 10)
    probs = rng.dirichlet(np.ones(3), size=30)
    right = rng.random(30) < accuracy_by_fold[int(config.data.fold)]
    probs[right] = np.eye(3)[labels[right]] * 0.9 + 0.1 / 3
    metrics = evaluate.compute_metrics(labels, probs, groups=np.arange(30), num_bootstrap=10)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    (directory / "history.json").write_text(json.dumps(
        [{"epoch": 0, "val_loss": 2.0}, {"epoch": 1, "val_loss": 1 - metrics["accuracy"]}]))

  return train_fn


def test_cv_reports_folds_mean_and_both_best_choices(tmp_path):
  c = smoke.get_config()
  c.data.num_folds = 3
  c.experiment.grid = "model.arch=vgg16,vgg19"   # ignored by --mode=cv
  doc = run_experiment(c, tmp_path, "cv", train_fn=fake_train({0: 0.5, 1: 0.9, 2: 0.7}))
  group = doc["groups"]["cv"]
  assert group["folds"] == [0, 1, 2]
  accs = [group["per_fold"][str(f)]["accuracy"] for f in range(3)]
  assert group["best_fold_by_test"] == int(np.argmax(accs))
  assert group["best_fold_by_val_loss"] == int(np.argmax(accs))  # val loss = 1 - accuracy here
  assert group["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
  text = (tmp_path / "cv.md").read_text()
  assert "(best by test)" in text and "mean ± sd" in text
  assert json.loads((tmp_path / "cv.json").read_text())["groups"]["cv"]["folds"] == [0, 1, 2]


def test_sweep_writes_its_plot_and_reports_failed_runs(tmp_path):
  c = smoke.get_config()
  c.experiment.grid = "data.train_fraction=0.5,1.0"
  c.experiment.num_folds = 1
  with pytest.raises(ExperimentIncomplete, match="frac0.5_fold0"):
    run_experiment(c, tmp_path, "sweep", train_fn=fake_train({0: 0.8}, fail={"frac0.5_fold0"}))
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert list(saved["groups"]) == ["frac1.0"]
  assert saved["status"]["frac0.5_fold0"].startswith("failed: FloatingPointError")
  assert (tmp_path / "sweep_train_fraction.png").stat().st_size > 0
  # One fold: the interval is the run's patient-group bootstrap interval.
  entry = saved["groups"]["frac1.0"]["summary"]["accuracy"]
  assert entry["low"] is not None and entry["sd"] is None
  # Fixed, started again: only the failed run trains.
  doc = run_experiment(c, tmp_path, "sweep", train_fn=fake_train({0: 0.8}))
  assert doc["status"] == {"frac0.5_fold0": "trained", "frac1.0_fold0": "skipped"}


def test_changed_config_is_refused_before_anything_trains(tmp_path):
  c = smoke.get_config()
  c.experiment.num_folds = 2
  run_experiment(c, tmp_path, "cv", train_fn=fake_train({0: 0.6, 1: 0.7}))
  # A field added to the code after the runs started is not a change.
  saved = json.loads((tmp_path / "runs/cv_fold0/config.json").read_text())
  del saved["train"]["mixup_alpha"]
  (tmp_path / "runs/cv_fold0/config.json").write_text(json.dumps(saved))
  c.experiment.select_metric = "macro_auc"   # experiment settings may change
  assert run_experiment(c, tmp_path, "cv", train_fn=None)["status"] == {
      "cv_fold0": "skipped", "cv_fold1": "skipped"}
  c.train.learning_rate = 1e-3
  with pytest.raises(runner.ConfigMismatch, match="train.learning_rate"):
    run_experiment(c, tmp_path, "cv", train_fn=fake_train({0: 0.6, 1: 0.7}))


def test_every_study_has_one_failure_policy_and_reports_without_training(tmp_path):
  """A failed run does not stop the others; the outputs cover the finished runs; then
  ExperimentIncomplete names it. report_study writes the same outputs and trains nothing."""
  from cxr_jax.experiments.study import Study, report_study, run_study

  c = smoke.get_config()
  c.experiment.num_folds = 1
  runs = grid.expand(c, grid.parse_grid("data.train_fraction=0.25,0.5,1.0", c))
  written, trained = [], []

  def train_fn(config, directory):
    trained.append(directory.name)
    fake_train({0: 0.8}, fail={"frac0.5_fold0"})(config, directory)

  def row(run, directory, results):
    assert set(results) == {"metrics.json"}   # the config's evaluators: test, no external set
    return {"run": run.name, "accuracy": results["metrics.json"]["accuracy"]}

  def write(workdir, runs_, rows, status, config):
    written.append((list(rows), dict(status)))
    return {"rows": rows, "status": status}

  study = Study("toy", lambda config, workdir: runs, row, write)
  with pytest.raises(ExperimentIncomplete, match="toy: 1 of 3 runs failed.*frac0.5_fold0"):
    run_study(study, c, tmp_path, train_fn)
  assert trained == ["frac0.25_fold0", "frac0.5_fold0", "frac1.0_fold0"]
  assert written == [(["frac0.25_fold0", "frac1.0_fold0"],
                      {"frac0.25_fold0": "trained", "frac0.5_fold0": "failed: FloatingPointError: "
                       "loss is nan", "frac1.0_fold0": "trained"})]
  doc = report_study(study, c, tmp_path)   # the status as the workdir's status.json has it
  assert trained == ["frac0.25_fold0", "frac0.5_fold0", "frac1.0_fold0"]
  assert (list(doc["rows"]), doc["status"]) == written[0]
  # A run that finished elsewhere since (another process, a cluster job) is in the table.
  fake_train({0: 0.8})(c, runner.run_dir(tmp_path, runs[1]))
  doc = report_study(study, c, tmp_path)
  assert list(doc["rows"]) == [r.name for r in runs]
  assert doc["status"]["frac0.5_fold0"] == "skipped"


# ---------------------------------------------------------------- grids and configs


def test_ablation_config_is_the_grid_or_one_cell():
  axes, runs = plan(ablation.get_config(), "ablation")
  assert [a.field for a in axes] == ["model.arch", "model.trainable_blocks"]
  assert len(runs) == 2 * 6 * 5
  run = next(r for r in runs if r.name == "vgg19_ft3_fold4")
  assert (run.config.model.arch, run.config.model.trainable_blocks, run.config.data.fold) == (
      "vgg19", 3, 4)
  cell = ablation.get_config("arch=vgg19,ft=3")
  assert cell.experiment.grid == "" and cell.model.trainable_blocks == 3
  with pytest.raises(ValueError, match="needs config.experiment.grid"):
    plan(cell, "ablation")
  assert [r.name for r in plan(cell, "cv")[1]] == [f"cv_fold{k}" for k in range(5)]


@pytest.mark.parametrize("spec, message", [
    ("model.depth=16", "unknown config field"),
    ("model.trainable_blocks=two", "not a valid int"),
    ("model.hidden=8", "only int, float, bool and str"),
    ("model.arch", "field=v1,v2"),
    ("model.arch=vgg16,vgg16", "repeated value"),
])
def test_bad_grid_names_the_problem(spec, message):
  with pytest.raises(ValueError, match=message):
    grid.parse_grid(spec, smoke.get_config())


def test_sweep_configs_plan():
  for module, field, count in ((resolution, "data.image_size", 4),
                               (data_fraction, "data.train_fraction", 4),
                               (mixup, "train.mixup_alpha", 2)):
    axes, runs = plan(module.get_config(), "sweep")
    assert [a.field for a in axes] == [field] and len(axes[0].values) == count
    assert len(runs) == count * 5


def _cxr3_metadata(root):
  with open(root / "manifest.csv") as f:
    rows = list(csv.DictReader(f))
  return dict(id=np.arange(len(rows)), label=np.array([data.LABELS.index(r["label"]) for r in rows]),
              patient_group=np.array([r["patient_group"] for r in rows]))


def test_data_fraction_sweep_keeps_patient_groups_whole(cxr3_root):
  meta = _cxr3_metadata(cxr3_root)
  _, runs = plan(data_fraction.get_config(), "sweep")
  full = {r.fold: data.make_splits(meta, r.config.data) for r in runs
          if r.config.data.train_fraction == 1.0}
  for run in runs:
    splits = data.make_splits(meta, run.config.data)
    reference = full[run.fold]
    np.testing.assert_array_equal(splits["val"], reference["val"])
    np.testing.assert_array_equal(splits["test"], reference["test"])
    kept = set(meta["patient_group"][splits["train"]])
    # Every kept group brings all of its training images; no other group has any.
    whole = reference["train"][np.isin(meta["patient_group"][reference["train"]], list(kept))]
    np.testing.assert_array_equal(np.sort(splits["train"]), np.sort(whole))
    share = len(splits["train"]) / len(reference["train"])
    assert abs(share - run.config.data.train_fraction) < 0.05, (run.name, share)
