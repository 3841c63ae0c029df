"""Twice transfer (Bassi & Attux 2022): ImageNet -> NIH findings -> COVID, compared with single.

  <workdir>/runs/stage1_fold<k>/     stage 1: data.task="findings" (14 NIH findings + No Finding,
                                     sigmoid), from ImageNet; never sees a COVID test-split patient
  <workdir>/runs/single_fold<k>/     ImageNet -> COVID (the usual single transfer)
  <workdir>/runs/twice_fold<k>/      stage 1's kept model -> COVID, new head
  <workdir>/runs/twice_onk_fold<k>/  the same with output neuron keeping (model.keep_neurons)
  <workdir>/twice_transfer.md|json, learning_curves.png

Stage 2 starts from stage 1's best (lowest validation loss) checkpoint. Like the other
experiments (a `study.Study`), a restart skips finished runs and resumes the unfinished one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxr_jax import files  # noqa: E402
from cxr_jax.evaluate.report import num  # noqa: E402
from cxr_jax.experiments import runner, summary, tables  # noqa: E402
from cxr_jax.experiments.grid import Run  # noqa: E402
from cxr_jax.experiments.study import Study, run_study  # noqa: E402

VARIANTS = ("single", "twice", "twice_onk")
_DESCRIPTION = {"single": "ImageNet -> COVID", "twice": "ImageNet -> NIH -> COVID, new head",
                "twice_onk": "ImageNet -> NIH -> COVID, output neurons kept"}


def stage1_config(config):
  """The findings run: the base config with the findings task and config.experiment.stage1's
  train.* overrides (e.g. more epochs on the larger NIH set)."""
  from cxr_jax.data.findings import FINDINGS

  c = config.copy_and_resolve_references()
  c.data.task = "findings"
  c.data.balance = False        # balance samples the three classes; stage 1 has no such classes
  c.model.num_classes = len(FINDINGS)
  c.model.init_from, c.model.keep_neurons = "", ()
  c.eval.evaluators = ("findings",)   # per-finding AUCs; no COVID classes to score
  for key, value in config.experiment.get("stage1", {}).items():
    if key not in c.train:
      raise ValueError(f"config.experiment.stage1.{key}: not a train.* field")
    c.train[key] = value
  return c


def variant_config(config, variant: str, stage1_dir: Path):
  c = config.copy_and_resolve_references()
  c.data.task = "classes"
  if variant == "single":
    c.model.init_from, c.model.keep_neurons = "", ()
  elif variant in ("twice", "twice_onk"):
    c.model.init_from = str(stage1_dir.resolve())
    c.model.keep_neurons = tuple(config.model.keep_neurons) if variant == "twice_onk" else ()
    if variant == "twice_onk" and not c.model.keep_neurons:
      raise ValueError("variant twice_onk needs config.model.keep_neurons, e.g. "
                       "('pneumonia:Pneumonia', 'normal:No Finding')")
  else:
    raise ValueError(f"unknown twice-transfer variant {variant!r}; use some of {VARIANTS}")
  return c


def plan(config, workdir: Path) -> list[Run]:
  variants = tuple(config.experiment.get("variants", VARIANTS))
  fold = int(config.data.fold)
  stage1 = Run("stage1", fold, (), stage1_config(config))
  stage1_dir = runner.run_dir(workdir, stage1)
  needs_stage1 = any(v != "single" for v in variants)
  return ([stage1] if needs_stage1 else []) + [
      Run(v, fold, (("variant", v),), variant_config(config, v, stage1_dir),
          needs=() if v == "single" else (stage1.name,)) for v in variants]


def row(run: Run, directory: Path, results: dict) -> dict:
  """The run's table row, with what the comparison's other parts read: its history (learning
  curves), its per-source figures and its external sets' headlines (stage 2 only)."""
  result = runner.load_result(directory)
  out = {**_row(run.cell, result["metrics"], result["history"]), "history": result["history"]}
  if run.cell != "stage1":
    out["by_source"] = summary.by_source([result["metrics"]])
    out["external"] = {str(run.fold): result["external"]}
  return out


def run_twice_transfer(config, workdir: str | Path, train_fn=None) -> dict:
  """Trains stage 1 and the stage-2 variants (skipping finished runs), writes the comparison."""
  return run_study(STUDY, config, workdir, train_fn)


def _row(name: str, m: dict, history: list[dict]) -> dict:
  first = history[0] if history else {}
  row = {"run": name, "epochs": len(history),
         "epoch1_val_loss": first.get("val_loss"), "epoch1_val_accuracy": first.get("val_accuracy"),
         "best_val_loss": min((h["val_loss"] for h in history), default=None)}
  if m.get("task") == "findings":
    row["test_mean_auc"] = m.get("mean_auc")
    return row
  per_class, intervals = m.get("per_class", {}), m.get("intervals", {})
  row.update(test_accuracy=m.get("accuracy"),
             test_accuracy_ci=_interval(intervals.get("accuracy")),
             test_macro_auc=m.get("macro", {}).get("roc_auc", {}).get("value"),
             **{f"test_{c}_auc": v.get("roc_auc") for c, v in per_class.items()},
             **{f"test_{c}_auc_ci": _interval(v.get("roc_auc"))
                for c, v in intervals.get("per_class", {}).items()})
  return row


def _interval(entry) -> tuple | None:
  """(low, high) of a patient-group bootstrap interval in metrics.json, if there is one."""
  if not entry or entry.get("low") is None:
    return None
  return (entry["low"], entry["high"])


def write(workdir: Path, runs: list[Run], rows: dict, status: dict, config) -> dict:
  """twice_transfer.md / .json and learning_curves.png over the finished runs' rows."""
  extras = ("history", "by_source", "external")
  table = [{k: v for k, v in r.items() if k not in extras} for r in rows.values()]
  stage2 = {r["run"]: r for r in rows.values() if r["run"] != "stage1"}
  text = (_markdown(table)
          + tables.markdown_by_source({name: r["by_source"] for name, r in stage2.items()})
          + tables.markdown_external({name: {"external": r["external"]}
                                      for name, r in stage2.items()})
          + tables.markdown_unfinished(status))
  doc = {"status": status, "rows": table,
         "written": [str(files.write_atomic(workdir / "twice_transfer.md", text)),
                     str(_learning_curves(stage2, workdir / "learning_curves.png"))]}
  files.write_json(workdir / "twice_transfer.json", doc)
  doc["written"].append(str(workdir / "twice_transfer.json"))
  logging.info("twice transfer: %s", json.dumps(table, default=str)[:600])
  return doc


STUDY = Study("twice transfer", plan, row, write)


def _fmt(x, interval=None) -> str:
  text = num(x) if x is None or isinstance(x, float) else str(x)
  return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _markdown(rows: list[dict]) -> str:
  stage2 = [r for r in rows if r["run"] != "stage1"]
  cols = ["epochs", "epoch1_val_loss", "epoch1_val_accuracy", "best_val_loss", "test_accuracy",
          "test_macro_auc", "test_covid_auc", "test_normal_auc", "test_pneumonia_auc"]
  lines = ["# Twice transfer (Bassi & Attux 2022)", "",
           "| run | what | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
  for r in stage2:
    lines.append(f"| {r['run']} | {_DESCRIPTION.get(r['run'], '')} | "
                 + " | ".join(_fmt(r.get(c), r.get(f"{c}_ci")) for c in cols) + " |")
  for r in rows:
    if r["run"] == "stage1":
      lines += ["", f"Stage 1 (NIH findings, multi-label): {r['epochs']} epochs, best validation "
                f"loss {_fmt(r['best_val_loss'])}, test mean AUC over findings "
                f"{_fmt(r.get('test_mean_auc'))} (per finding: runs/stage1_*/metrics.json)."]
  lines += ["", "Test metrics are on the COVID task's held-out patient groups, with 95% "
            "patient-group bootstrap intervals where computed; epoch-1 columns show how fast each "
            "start learns (the paper's claim for output neuron keeping).", ""]
  return "\n".join(lines)


def _learning_curves(stage2: dict, path: Path) -> Path:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, res in stage2.items():
    if not res["history"]:
      continue
    epochs = [h["epoch"] + 1 for h in res["history"]]
    for ax, key in zip(axes, ("val_loss", "val_accuracy"), strict=True):
      ax.plot(epochs, [h[key] for h in res["history"]], marker="o", label=name)
  for ax, key in zip(axes, ("validation loss", "validation accuracy"), strict=True):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Twice transfer: learning curves of stage 2")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
