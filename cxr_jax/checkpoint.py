"""Workdir layout and orbax checkpoints: the one module that knows a run directory's file names.
Training writes through it, evaluation, prediction and the experiment runners read through it; it
sits below all of them (it imports neither cxr_jax.train nor cxr_jax.evaluate).

  workdir/config.json        the resolved config of the run
  workdir/versions.json      dataset, weights, preprocessing and package versions used
  workdir/history.json       per-epoch metrics of the finished training loop
  workdir/metrics.json       test-split evaluation of the kept model; its presence marks a run done
  workdir/checkpoints/latest full train state + loop state, every epoch (resume point)
  workdir/checkpoints/best   parameters of the epoch with the lowest validation loss (the kept model)
  workdir/ood_fit.npz        the out-of-distribution scores' fit of the kept model
                             (`cxr_jax.evaluate.ood`), versioned by its `model_digest`
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cxr_jax import files, models

CONFIG_FILE, VERSIONS_FILE = "config.json", "versions.json"
METRICS_FILE, HISTORY_FILE = "metrics.json", "history.json"
OOD_FILE = "ood_fit.npz"


def _manager(directory: Path, this_process_only: bool = False) -> ocp.CheckpointManager:
  """Saving is collective (every process of a multi-process run); a reader on one process
  (the evaluation, which process 0 does alone) must not wait for the others at orbax's barriers."""
  here = jax.process_index()
  multiprocessing = (ocp.options.MultiprocessingOptions(primary_host=here, active_processes={here})
                     if this_process_only and jax.process_count() > 1 else None)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=not this_process_only, enable_async_checkpointing=False,
      **({"multiprocessing_options": multiprocessing} if multiprocessing else {}))
  return ocp.CheckpointManager(directory.absolute(), options=options, item_names=("state", "meta"))


class Checkpoints:
  """The two checkpoint series of a run: `latest` (resume) and `best` (kept parameters)."""

  def __init__(self, workdir: str | Path):
    root = Path(workdir) / "checkpoints"
    self.latest = _manager(root / "latest")
    self.best = _manager(root / "best")

  def save_latest(self, epoch: int, state: Any, meta: dict) -> None:
    self.latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save_best(self, epoch: int, variables: Any, meta: dict) -> None:
    self.best.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
    """The latest train state (shaped like `target`) and its loop state, or None for a new run."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _restore_variables(workdir: Path, which: str) -> dict:
  manager = _manager(workdir / "checkpoints" / which, this_process_only=True)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"no '{which}' checkpoint in {workdir}/checkpoints: train first "
        f"(python launch.py --config=... --workdir={workdir})")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  state = restored["state"]
  # The latest checkpoint holds the whole train state; the best one holds the variables only.
  if which == "latest":
    return {k: state[k] for k in ("params", "batch_stats") if state.get(k)}
  return dict(state)


def model_digest(variables) -> str:
  """Short sha256 of the variables' shapes and bytes: which parameters a fit made from them (the
  temperature, the out-of-distribution fit) belongs to."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def write_run_info(workdir: str | Path, config: ml_collections.ConfigDict, versions: dict) -> None:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_atomic(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))
  files.write_json(workdir / VERSIONS_FILE, versions, indent=2, sort_keys=True)


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: {workdir} is not a cxr_jax training workdir")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict
  preprocessing: str
  versions: dict


def load_trained(workdir: str | Path, which: str = "best", dtype=None) -> Trained:
  """The model and parameters a workdir kept (`best`) or reached last (`latest`); the model
  computes in `dtype` ("float32", "bfloat16"), default the run's `config.model.dtype`."""
  workdir = Path(workdir)
  config = read_config(workdir)
  versions = json.loads((workdir / VERSIONS_FILE).read_text())
  variables = jax.tree.map(jax.numpy.asarray, _restore_variables(workdir, which))
  model = models.create_model(config.model, dtype=None if dtype is None else jax.numpy.dtype(dtype))
  return Trained(config, model, variables, versions["preprocessing"], versions)


def save_trained(workdir: str | Path, config: ml_collections.ConfigDict, variables: dict,
                 preprocessing: str, versions: dict | None = None) -> None:
  """Writes a loadable workdir from given variables (no training): for tests and imported models."""
  versions = dict(versions or {}, preprocessing=preprocessing)
  write_run_info(workdir, config, versions)
  ckpt = Checkpoints(workdir)
  ckpt.save_best(0, variables, {"epoch": 0, "val_loss": None})
  ckpt.close()
