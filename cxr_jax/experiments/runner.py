"""Runs an experiment's runs one after another, each in its own workdir, surviving interruption.

  <workdir>/runs/<cell>_fold<k>/   one trainer workdir per run (config.json, checkpoints, metrics.json)

A run is finished when its metrics.json exists; it is then skipped. An unfinished run is started
again and the trainer resumes it from its latest checkpoint. A run folder whose config.json
disagrees with the run's config is never reused: that would mix two experiments in one table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from cxr_jax import files
from cxr_jax.checkpoint import CONFIG_FILE, HISTORY_FILE, METRICS_FILE
from cxr_jax.experiments.grid import Run

RUNS_DIR = "runs"
STATUS_FILE = "status.json"   # each run's state after the last start (write_status)
# Fields that do not change what a run computes: they may differ between a run and its restart.
_IGNORED = ("experiment", "train.feature_cache", "train.feature_cache_max_gb",
            "train.log_every_steps", "distributed", "coordinator_address", "num_processes",
            "process_id", "model.pool_impl", "host_memory", "eval.external",
            "eval.temperature_scaling", "eval.loso", "eval.evaluators")


class ConfigMismatch(ValueError):
  pass


def run_dir(workdir: str | Path, run: Run) -> Path:
  return Path(workdir) / RUNS_DIR / run.name


def _comparable(config_dict: dict) -> dict:
  """The config as plain JSON values, without the fields in _IGNORED."""
  out = json.loads(json.dumps(config_dict))
  for field in _IGNORED:
    *parents, leaf = field.split(".")
    node = out
    for part in parents:
      node = node.get(part, {})
    node.pop(leaf, None)
  return out


_MISSING = object()


def _differences(saved, now, prefix="") -> list[str]:
  """Fields whose values differ. A field the saved config lacks is not a difference: it was
  added to the code after the run started, and new fields default to the old behaviour."""
  if isinstance(saved, dict) and isinstance(now, dict):
    return [d for k in sorted(set(saved) | set(now))
            for d in _differences(saved.get(k, _MISSING), now.get(k, _MISSING), f"{prefix}{k}.")]
  if saved is _MISSING or saved == now:
    return []
  return [f"{prefix.rstrip('.')}: saved {saved!r}, now {'(none)' if now is _MISSING else repr(now)}"]


def check_config(directory: Path, run: Run) -> None:
  """Raises ConfigMismatch if `directory` holds a run of another config."""
  path = directory / CONFIG_FILE
  if not path.is_file():
    return
  saved = _comparable(json.loads(path.read_text()))
  wanted = _comparable(json.loads(run.config.to_json_best_effort()))
  diffs = _differences(saved, wanted)
  if diffs:
    raise ConfigMismatch(
        f"{directory} holds a run with another config ({'; '.join(diffs[:5])}"
        f"{'; ...' if len(diffs) > 5 else ''}). Use a new --workdir for a changed experiment, "
        f"or delete {directory} to train it again.")


def is_finished(directory: Path) -> bool:
  return (directory / METRICS_FILE).is_file()


def run_one(run: Run, directory: Path, train_fn: Callable) -> str:
  """One run as every executor runs it: 'skipped' if finished, else trained (resumed from its
  latest checkpoint when it has one) -> 'trained'. Refuses a directory of another config."""
  check_config(directory, run)
  if is_finished(directory):
    return "skipped"
  logging.info("experiment: run %s (%s)", run.name,
               "resuming" if (directory / "checkpoints").is_dir() else "new")
  train_fn(run.config, directory)
  return "trained"


def run_local(runs: list[Run], workdir: str | Path, train_fn: Callable) -> dict[str, str]:
  """The local executor: every run in turn in this process; {run name: 'skipped' | 'trained' |
  'failed: ...'}. A run that fails (e.g. a non-finite loss) is reported and the others go on;
  KeyboardInterrupt stops everything (the next start resumes)."""
  status = {}
  for run in runs:
    try:
      status[run.name] = run_one(run, run_dir(workdir, run), train_fn)
    except Exception as e:  # one bad run must not cost the others
      logging.exception("experiment: run %s failed", run.name)
      status[run.name] = f"failed: {type(e).__name__}: {e}"
    write_status(workdir, status, runs)
  return status


def write_status(workdir, status: dict, runs: list[Run]) -> None:
  files.write_json(Path(workdir) / STATUS_FILE,
                   {r.name: status.get(r.name, "pending") for r in runs})


def load_status(workdir) -> dict:
  """What `write_status` wrote ({} before the first run_local)."""
  path = Path(workdir) / STATUS_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def load_history(directory: Path) -> list[dict]:
  """A run's per-epoch history (history.json; [] before its first epoch ends)."""
  path = directory / HISTORY_FILE
  return json.loads(path.read_text()) if path.is_file() else []


def load_result(directory: Path) -> dict:
  """A finished run's test metrics, its per-epoch history, the validation loss of its kept (best)
  epoch, its number of epochs and its external sets' headlines."""
  metrics = json.loads((directory / METRICS_FILE).read_text())
  history = load_history(directory)
  losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
  from cxr_jax.evaluate.external import load_headlines

  return dict(metrics=metrics, history=history, val_loss=min(losses) if losses else None,
              epochs=len(history), external=load_headlines(directory))
