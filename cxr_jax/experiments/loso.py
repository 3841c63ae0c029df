"""Leave-one-source-out: for each source, a model trained without it, scored on all of it.

  python launch.py --config=configs/quickstart.py --workdir=W --mode=loso \
      --config.experiment.num_folds=1 [--config.experiment.loso_sources=ieee8023,hannover]

One run per held-out source (x folds, as the other experiments), through the same resumable
runner (`runs/without_<source>_fold<k>/`): `data.held_out_source` moves that source's patient
groups out of train / val / test (`cxr_jax.data.splits.hold_out_source`, which asserts it), the
trainer evaluates the rest's test split as usual, and the "held_out" split, every labelled image
of the source, is evaluated into the run's `eval_held_out/`. Tables: loso.md, loso.csv, loso.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cxr_jax.experiments import grid, runner, tables

HELD_OUT = "held_out"


def sources_to_hold_out(config) -> list[str]:
  """config.experiment.loso_sources, or every source of the data (labelled images) when empty."""
  names = [s.strip() for s in str(config.experiment.get("loso_sources", "")).split(",") if s.strip()]
  if names:
    return names
  from cxr_jax import data

  built = data.build_dataset(config.data)
  meta = built.metadata
  return sorted(set(meta["source"][meta["label"] != data.NO_LABEL].tolist()))


def plan(config) -> list[grid.Run]:
  """One run per (held-out source, fold); unknown sources fail in the splits before training."""
  if config.data.get("held_out_source"):
    raise ValueError("--mode=loso sets data.held_out_source per run; leave it empty")
  spec = "data.held_out_source=" + ",".join(sources_to_hold_out(config))
  return grid.expand(config, grid.parse_grid(spec, config))


def train_and_evaluate_held_out(config, workdir) -> dict:
  """The trainer's run, then the held-out source's evaluation (also redone if it is missing)."""
  from cxr_jax import train

  metrics = train.train_and_evaluate(config, workdir)
  held_out_metrics(config, Path(workdir))
  return metrics


def _load(path: Path) -> dict:
  return json.loads(path.read_text())


def held_out_metrics(config, directory: Path) -> dict:
  from cxr_jax import evaluate

  path = directory / f"eval_{HELD_OUT}" / runner.METRICS_FILE
  if path.is_file():
    return _load(path)
  return evaluate.evaluate_workdir(directory, HELD_OUT, config)


def run_loso(config, workdir, train_fn=None) -> dict:
  """Trains the unfinished runs, evaluates each held-out source, writes the tables."""
  import jax

  workdir = Path(workdir)
  runs = plan(config)
  logging.info("leave-one-source-out: %d runs in %s", len(runs), workdir / runner.RUNS_DIR)
  status = runner.run_all(runs, workdir, train_fn or train_and_evaluate_held_out)
  if jax.process_index() != 0:
    return {}
  rows = []
  for run in runs:
    directory = runner.run_dir(workdir, run)
    if not runner.is_finished(directory):
      continue
    rows.append(table_row(run, held_out_metrics(run.config, directory),
                          _load(directory / runner.METRICS_FILE)))
  doc = dict(mode="loso", status=status, rows=rows)
  doc["written"] = tables.write_table(workdir, "loso", doc, rows, markdown(rows, status))
  return doc


def _auc(metrics: dict, source: str, key: str):
  return ((metrics.get("within_source", {}).get(source) or {}).get(key) or {}).get("value")


def table_row(run: grid.Run, held: dict, internal: dict) -> dict:
  """Held-out source: its label mix, accuracy, per-class sensitivity, within-source AUCs; and
  the rest's internal test accuracy and COVID AUC."""
  source = run.config.data.held_out_source
  names = held["class_names"]
  within = held.get("within_source", {}).get(source, {})
  row = {"held_out_source": source, "fold": run.fold, "images": held["num_examples"],
         **{f"n_{c}": n for c, n in zip(names, held["label_counts"], strict=True)},
         "accuracy": held["accuracy"]}
  for c in names:
    row[f"sensitivity_{c}"] = within.get("sensitivity", {}).get(c)
    row[f"called_{c}"] = within.get("called", {}).get(c)
  row["covid_auc"] = _auc(held, source, "covid_auc")
  row["normal_vs_pneumonia_auc"] = _auc(held, source, "normal_vs_pneumonia_auc")
  row["rest_test_images"] = internal.get("num_examples")
  row["rest_test_accuracy"] = internal.get("accuracy")
  row["rest_test_covid_auc"] = (internal.get("per_class", {}).get("covid") or {}).get("roc_auc")
  return row


def _num(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], status: dict) -> str:
  lines = ["# Leave one source out", "",
           "Each row: a model trained without the source's patient groups, scored on every "
           "labelled image of it (held out), and on the test split of the other sources (rest). "
           "`-`: undefined (the source lacks a class).", "",
           "| held-out source | fold | images (c/n/p) | accuracy | sens. covid | sens. normal | "
           "sens. pneumonia | called covid | COVID AUC | normal-vs-pneumonia AUC | rest test "
           "accuracy | rest COVID AUC |",
           "| --- |" + " --- |" * 11]
  for r in rows:
    lines.append(
        f"| {r['held_out_source']} | {r['fold']} | {r['images']} ({r['n_covid']}/{r['n_normal']}/"
        f"{r['n_pneumonia']}) | {_num(r['accuracy'])} | {_num(r['sensitivity_covid'])} | "
        f"{_num(r['sensitivity_normal'])} | {_num(r['sensitivity_pneumonia'])} | "
        f"{_num(r['called_covid'])} | {_num(r['covid_auc'])} | "
        f"{_num(r['normal_vs_pneumonia_auc'])} | {_num(r['rest_test_accuracy'])} | "
        f"{_num(r['rest_test_covid_auc'])} |")
  unfinished = sorted(k for k, v in status.items() if v.startswith("failed"))
  if unfinished:
    lines += ["", f"Failed runs (start the command again to retry): {', '.join(unfinished)}."]
  return "\n".join(lines) + "\n"
