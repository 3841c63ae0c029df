"""evaluate_workdir: run a saved model over a split and write metrics.json, plots and report.md."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import jax
import numpy as np

from cxr_jax import checkpoint, files
from cxr_jax.data.records import LABELS
from cxr_jax.evaluate import calibration, ood
from cxr_jax.evaluate.evaluator import Evaluator
from cxr_jax.evaluate.plots import write_plots
from cxr_jax.evaluate.report import render_report
from cxr_jax.evaluate.run import LoadedRun, eval_setting
from cxr_jax.evaluate.summary import compute_metrics


def write_predictions(path: Path, ids, labels, probs, metadata, class_names=LABELS) -> None:
  """One CSV row per image: id, file, source, patient_group, label, prediction, probabilities."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "file", "source", "patient_group", "label", "prediction",
                     *[f"p_{n}" for n in class_names]])
    for i, y, p in zip(ids, labels, probs, strict=True):
      writer.writerow([int(i), metadata["file"][i], metadata["source"][i],
                       metadata["patient_group"][i], class_names[y],
                       class_names[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])


def evaluate_workdir(workdir, split: str = "test", config=None, *, which: str = "best",
                     out_dir=None) -> dict:
  """Recomputes the evaluation of a trained workdir from its checkpoint.

  Writes into `out_dir` (default: the workdir for the test split, `<workdir>/eval_<split>`
  otherwise): metrics.json, roc.png, pr.png, confusion_matrix.png, reliability.png, report.md
  and predictions.csv. Returns the metrics dict (plus "written": the files). With
  eval.temperature_scaling, metrics["calibration"] also holds the temperature fitted on the run's
  validation split and ECE / NLL of this split before and after it (`add_calibration`). With
  eval.ood, metrics["ood"] holds the out-of-distribution section (`ood.run_section`; the fit is
  made on the training split and stored as workdir/ood_fit.npz where none is stored for the kept
  parameters).
  """
  return evaluate_split(LoadedRun.from_workdir(workdir, config, which=which), split, out_dir)


def evaluate_split(run: LoadedRun, split: str, out_dir=None) -> dict:
  """The evaluation of `evaluate_workdir` of a run in hand: the trainer's holds the dataset and
  splits it trained on, `--mode=evaluate`'s rebuilt them from the workdir; both end here, so both
  write the same files. Predictions come from the run's cache (the validation fit's too)."""
  run.check_classes("--mode=evaluate/explain and predict")
  config, built, which = run.config, run.built, run.which
  pred = run.predictions(split)
  probs, labels, ids = pred.probs, pred.labels, pred.ids
  meta = built.metadata
  metrics = score(config, labels, probs, meta, ids)
  if eval_setting(config, "temperature_scaling", True):
    add_calibration(metrics, run.validation_fit(), labels, probs)
  if eval_setting(config, "ood", True):
    outputs, ood_labels, ood_ids = ood.run_outputs(run, split)
    metrics["ood"] = ood.run_section(run, outputs, ood_labels, meta["source"][ood_ids],
                                     is_reference=split == "test")
  metrics["run"] = dict(workdir=str(run.workdir), split=split, checkpoint=which,
                        dataset=built.version, preprocessing=run.trained.preprocessing)
  metrics["data_splits"] = data_splits(config, built.metadata, run.splits)
  out = (Path(out_dir) if out_dir else
         run.workdir / ("" if split == "test" else f"eval_{split}"))
  title = f"Evaluation of {run.workdir.name} on the {split} split ({which} checkpoint)"
  write_evaluation(out, metrics, title, ids, labels, probs, meta)
  logging.info("evaluation of %s (%s): accuracy %.4f; wrote %s", run.workdir, split,
               metrics["accuracy"], out)
  return metrics


def data_splits(config, metadata, splits: dict) -> dict:
  """What the run's splits hold: images per (source, label) cell of each split, and the cells some
  split lacks (a reader of any figure sees which collections and labels it rests on)."""
  from cxr_jax import data

  return dict(stratify=str(config.data.get("stratify", "label")),
              cells={name: data.cell_table(metadata, np.unique(ids))
                     for name, ids in splits.items()},
              missing_cells=data.missing_cells(metadata, splits))


def score(config, labels, probs, meta, ids) -> dict:
  """compute_metrics of one prediction set with the config's evaluation settings, bootstrapped
  over the examples' patient groups and broken down by their sources."""
  return compute_metrics(
      labels, probs, groups=meta["patient_group"][ids], sources=meta["source"][ids],
      num_bootstrap=int(eval_setting(config, "num_bootstrap", 1000)),
      ci=float(eval_setting(config, "ci", 0.95)), seed=int(config.seed))


def add_calibration(metrics: dict, fit: dict, labels, probs) -> None:
  """Adds the validation fit to metrics["calibration"] and, when a temperature was fitted, ECE
  and NLL of the evaluated examples before and after it (same bins as the reliability curve, so
  ece_before is its ECE). The reported probabilities stay the model's own."""
  cal = metrics["calibration"]
  cal.update(fit)
  if fit["temperature"] is not None:
    cal.update(calibration.calibration_summary(
        calibration.logits_from_probs(probs), labels, fit["temperature"],
        num_bins=len(cal["bins"])))


def write_evaluation(out: Path, metrics: dict, title: str, ids, labels, probs, meta) -> None:
  """metrics.json, report.md, predictions.csv and the plots into `out`; sets metrics["written"].
  Every process computes the same numbers; process 0 writes them."""
  written = []
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(metrics, out)
    files.write_json(out / checkpoint.METRICS_FILE, metrics)
    files.write_atomic(out / "report.md", render_report(metrics, plots, title=title))
    write_predictions(out / "predictions.csv", ids, labels, probs, meta)
    written = [checkpoint.METRICS_FILE, "report.md", "predictions.csv", *plots.values()]
  metrics["written"] = [str(out / f) for f in written]


class Split(Evaluator):
  """metrics.json, report.md, predictions.csv and plots of one split of the run's own data: the
  test split at the top of the run's workdir (the trainer's metrics.json), another in eval_<split>
  (`folder` overrides)."""

  result_file, writes_itself = checkpoint.METRICS_FILE, True

  def __init__(self, split: str, folder: str | None = None):
    self.split = split
    self.name = folder if folder is not None else ("" if split == "test" else f"eval_{split}")

  def compute(self, run, folder):
    return evaluate_split(run, self.split, folder)
