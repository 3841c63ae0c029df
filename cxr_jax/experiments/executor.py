"""Where an experiment's runs train: config.experiment.executor = "local" (runner.run_local, one
after another in this process) or "slurm" (slurm.run_slurm, one job of a SLURM array each).
Both run each run through runner.run_one, in its own runs/<run>/ directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxr_jax.experiments import runner, slurm
from cxr_jax.experiments.grid import Run

EXECUTORS = ("local", "slurm")


def run_all(runs: list[Run], workdir: str | Path,
            train_fn: Callable | None = None) -> dict[str, str]:
  """Trains every unfinished run; returns {run name: 'skipped' | 'trained' | 'failed: ...'}
  (with the slurm executor also 'pending: ...'), also written to workdir/status.json.

  Every run's config is checked before the first one trains, so a mismatch stops the experiment
  before it spends hours.
  """
  if train_fn is None:
    from cxr_jax.train import train_and_evaluate as train_fn
  executor = runs[0].config.experiment.get("executor", "local") if runs else "local"
  if executor not in EXECUTORS:
    raise ValueError(f"config.experiment.executor={executor!r}: use one of {EXECUTORS}")
  for run in runs:
    runner.check_config(runner.run_dir(workdir, run), run)
  run = slurm.run_slurm if executor == "slurm" else runner.run_local
  status = run(runs, workdir, train_fn)
  runner.write_status(workdir, status, runs)
  return status
