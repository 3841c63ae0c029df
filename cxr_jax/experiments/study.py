"""Every experiment has one shape: plan -> run all -> one row per finished run -> write.

  run_study(Study(name, plan, row, write), config, workdir)

plan(config, workdir) -> [grid.Run]   the runs, each with its own config, validated before
    anything trains. What a study needs of a run beyond the trainer's test split (LOSO's held-out
    source, the robustness ablation's validation split and probes) is named in that run's
    config.eval.evaluators, so the trainer computes it: no study needs its own train function.
run all                               executor.run_all: local or SLURM, every run through
    runner.run_one (skipped when finished, resumed from its latest checkpoint otherwise).
row(run, directory, results) -> dict  one finished run's row. `results` holds each evaluator of
    the run's config.eval.evaluators by `Evaluator.key`: read when written, computed now when
    missing (an external set added after the run trained; a run of an older version).
write(workdir, runs, rows, status, config) -> dict   the study's tables and figures over the
    rows ({run name: row}, plan order); returns its document with the files under "written".

One failure policy for every study: a failed run never stops the others; the outputs are written
over the finished runs; then ExperimentIncomplete names the failed runs (the launcher exits
non-zero; the same command resumes, skipping what finished). Runs still pending on a cluster are
not failures. `report_study` writes the outputs without training anything (e.g. while a run
still trains elsewhere).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from cxr_jax.experiments import executor, runner
from cxr_jax.experiments.grid import Run


class ExperimentIncomplete(RuntimeError):
  """Some runs failed; the outputs cover the finished ones."""


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  plan: Callable[..., list[Run]]
  row: Callable[[Run, Path, dict], dict]
  write: Callable[..., dict]


def with_evaluators(config, *names: str):
  """`config` with `names` added to its eval.evaluators (each once, in order)."""
  have = tuple(config.eval.get("evaluators", ("test", "external")))
  config.eval.evaluators = have + tuple(n for n in names if n not in have)
  return config


def run_study(study: Study, config, workdir, train_fn: Callable | None = None) -> dict:
  """Trains the study's unfinished runs (train_fn default: the trainer), then writes its outputs.
  Raises ExperimentIncomplete after writing them if a run failed."""
  import jax

  workdir = Path(workdir)
  runs = study.plan(config, workdir)
  logging.info("%s: %d runs in %s", study.name, len(runs), workdir / runner.RUNS_DIR)
  status = executor.run_all(runs, workdir, train_fn)
  if jax.process_index() != 0:   # the outputs are files: one process writes them
    return {}
  doc = report_study(study, config, workdir, status, runs)
  failed = {k: v for k, v in status.items() if v.startswith("failed")}
  if failed:
    raise ExperimentIncomplete(
        f"{study.name}: {len(failed)} of {len(runs)} runs failed ({failed}); the outputs in "
        f"{workdir} cover the others. Fix the cause and start the same command again: finished "
        "runs are skipped.")
  return doc


def report_study(study: Study, config, workdir, status: dict | None = None,
                 runs: list[Run] | None = None) -> dict:
  """The study's outputs over its finished runs, training nothing (`status` default: the
  workdir's status.json)."""
  workdir = Path(workdir)
  runs = study.plan(config, workdir) if runs is None else runs
  rows, status = {}, dict(runner.load_status(workdir) if status is None else status)
  for run in runs:
    directory = runner.run_dir(workdir, run)
    if runner.is_finished(directory):
      rows[run.name] = study.row(run, directory, run_results(run, directory))
      if not status.get(run.name, "").startswith(("skipped", "trained")):
        status[run.name] = "skipped"   # finished since the status was written (e.g. elsewhere)
  return study.write(workdir, runs, rows, status, config)


def run_results(run: Run, directory: Path) -> dict[str, dict]:
  """{Evaluator.key: result} of the evaluators a finished run's config names; the run is loaded
  only if one of them is missing."""
  from cxr_jax import evaluate

  evaluators = evaluate.from_config(run.config)
  return evaluate.run_evaluators(
      lambda: evaluate.LoadedRun.from_workdir(directory, run.config), evaluators, directory)
