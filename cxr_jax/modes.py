"""launch.py's modes, registered in one table: name -> what it runs, what it prints, documented
once here (launch.py's --mode help lists them).

Each mode's function takes (config, workdir, options) — options holding launch.py's own flags
(split, method, per_class) — and returns a JSON-able dict; its headline is the few numbers printed
at the end (the full set is in the workdir).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path


def metrics_headline(metrics: dict) -> dict:
  """The few numbers worth printing at the end, each beside what qualifies it: the accuracy's
  interval, what the source alone reaches, and the COVID AUC inside each source that holds COVID
  and other images."""
  keys = ("num_examples", "accuracy", "source_only_accuracy", "winners", "written")
  picked = {k: metrics[k] for k in keys if k in metrics}
  if "intervals" in metrics:
    picked["accuracy_ci"] = metrics["intervals"].get("accuracy")
  if isinstance(metrics.get("per_class"), dict):
    picked["roc_auc"] = {c: m.get("roc_auc") for c, m in metrics["per_class"].items()}
  within = {s: w["covid_auc"]["value"] for s, w in metrics.get("within_source", {}).items()
            if (w.get("covid_auc") or {}).get("value") is not None}
  if within:
    picked["covid_auc_within_source"] = within
  return picked or metrics


def _train(config, workdir, options):
  from cxr_jax import train

  return train.train_and_evaluate(config, workdir)


def _evaluate(config, workdir, options):
  from cxr_jax import evaluate

  run = evaluate.LoadedRun.from_workdir(workdir, config)
  result = evaluate.evaluate_split(run, options.split)
  if config.eval.external:
    external = evaluate.evaluate_external(workdir, config.eval.external, run=run)
    result["external"] = {name: m["headline"] for name, m in external.items()}
  return result


def _audit(config, workdir, options):
  from cxr_jax import evaluate

  return evaluate.audit_workdir(workdir, config.eval.external, config=config,
                                loso=config.eval.loso)


def _explain(config, workdir, options):
  from cxr_jax import explain

  return explain.explain_workdir(workdir, split=options.split, per_class=options.per_class,
                                 method=options.method, config=config)


def _experiment(name: str) -> Callable:
  def run(config, workdir, options):
    from cxr_jax import experiments

    return experiments.run_study(experiments.STUDIES[name], config, workdir)
  return run


@dataclasses.dataclass(frozen=True)
class Mode:
  run: Callable
  doc: str
  headline: Callable[[dict], dict] = metrics_headline
  external: bool = False         # takes --external (config.eval.external)
  prints_external: bool = False  # prints each external set's headline under the internal one

  def printed(self, result) -> str:
    """What launch.py prints at the end: the headline as JSON, then (prints_external) each
    external set's headline line, the gap under the internal figures."""
    summary = result if isinstance(result, dict) else {"result": str(result)}
    lines = [json.dumps(self.headline(summary), indent=2)]
    if self.prints_external:
      from cxr_jax.evaluate.external import format_headline

      lines += [format_headline(name, h) for name, h in summary.get("external", {}).items()]
    return "\n".join(lines)


MODES = {
    "train": Mode(_train, "train (resume if the workdir has a checkpoint), then evaluate the kept "
                  "model on the test split", external=True, prints_external=True),
    "evaluate": Mode(_evaluate, "recompute metrics and plots of --split from the kept checkpoint",
                     external=True, prints_external=True),
    "audit": Mode(_audit, "the generalisation audit on one page, workdir/audit/audit.md "
                  "(cxr_jax.evaluate.audit)", external=True,
                  headline=lambda r: {"audit": str(Path(r["workdir"]) / "audit" / "audit.md")}),
    "explain": Mode(_explain, "heatmap overlays (--method) of --split"),
    "cv": Mode(_experiment("cv"), "every fold in workdir/runs/, then tables (cxr_jax.experiments)"),
    "ablation": Mode(_experiment("ablation"), "every grid cell x fold, Table 2 and figure"),
    "sweep": Mode(_experiment("sweep"), "as ablation, for any config.experiment.grid"),
    "loso": Mode(_experiment("loso"), "leave one source out: a model per held-out source, "
                 "scored on all of it; loso.md", external=True),
    "robustness": Mode(_experiment("robustness"), "the source-robustness ablation: baseline, "
                       "each measure, a combination, each run audited; robustness.md",
                       external=True),
    "twice_transfer": Mode(_experiment("twice_transfer"), "NIH findings stage, then single / "
                           "twice / twice+output-neuron-keeping runs (configs/twice_transfer.py)"),
}


def help_text() -> str:
  """--mode's help: every mode with its line."""
  return "What to do: " + "; ".join(f"{name} ({m.doc})" for name, m in MODES.items()) + "."


def taking_external() -> str:
  return "/".join(name for name, m in MODES.items() if m.external)


class _QuietLibraries(logging.Filter):
  """Drops the INFO chatter of orbax/tfds (dozens of lines per checkpoint); warnings still show."""

  def filter(self, record):
    noisy = ("/orbax/", "/tensorflow_datasets/")
    return record.levelno > logging.INFO or not any(n in record.pathname for n in noisy)


def quiet_libraries() -> None:
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
