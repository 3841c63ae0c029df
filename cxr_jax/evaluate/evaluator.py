"""The evaluator interface: an evaluation of a loaded run (`run.LoadedRun`: the kept model, its
data, its predict / feature / Grad-CAM functions and the predictions per split, cached) that
writes one output.

An evaluator has a `name`, the folder of its output under the directory it is given
(`<out>/<name>/`), and `compute(run, folder) -> dict`. `Evaluator.run` is the one place that
skips an evaluation whose output is already written (`done`); `redo=True` computes it again.
`run_evaluators` runs a list over one loaded run, loading it only if some output is missing.
An evaluation that writes its own files is a subclass beside what it computes (`workdir.Split`,
`external.External`); one whose result is a dict of a run is `Computed(name, fn)`
(`probes.source_probes`, `shortcuts.lung_probes`, ...). `evaluators.REGISTRY` names them for
`config.eval.evaluators`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from cxr_jax import files
from cxr_jax.evaluate.run import LoadedRun


class Evaluator:
  """One evaluation of a loaded run, written under `<out>/<name>/`."""

  name: str = ""
  result_file: str = "result.json"   # written by `run` from compute's dict unless writes_itself
  writes_itself: bool = False         # compute writes result_file (with its plots, reports)

  def output(self, out: Path) -> Path:
    """The file whose presence says this evaluation is done."""
    return Path(out) / self.name / self.result_file

  @property
  def key(self) -> str:
    """Its result's key in `run_evaluators`: the output's path under `out` (unique)."""
    return (Path(self.name) / self.result_file).as_posix()

  def done(self, out: Path) -> bool:
    return self.output(out).is_file()

  def compute(self, run: LoadedRun, folder: Path) -> dict:
    raise NotImplementedError

  def run(self, run: LoadedRun, out=None, *, redo: bool = False) -> dict:
    """The result: read from `<out>/<name>/` when written already (unless redo), else computed
    and written there. `out` defaults to the run's workdir."""
    path = self.output(run.workdir if out is None else out)
    if path.is_file() and not redo:
      logging.info("%s: written already, not recomputed", path)
      return json.loads(path.read_text())
    result = self.compute(run, path.parent)
    if not self.writes_itself:
      files.write_json(path, result)
    return result


class Computed(Evaluator):
  """An evaluator whose result is `fn(run)`, written to `<out>/<name>/<result_file>` (default
  `<name>.json`)."""

  def __init__(self, name: str, fn: Callable[[LoadedRun], dict], result_file: str = ""):
    self.name, self.fn, self.result_file = name, fn, result_file or f"{name}.json"

  def compute(self, run, folder):
    return self.fn(run)


def run_evaluators(run: LoadedRun | Callable[[], LoadedRun], evaluators, out=None, *,
                   redo: bool = False) -> dict[str, dict]:
  """{evaluator.key: result} of every evaluator on one run. `run` may be a function that loads it: it is
  called only when some output is missing (or redo), so finished evaluations cost no load."""
  if callable(run) and not isinstance(run, LoadedRun):
    todo = [ev for ev in evaluators if redo or not ev.done(Path(out))]
    if not todo and evaluators:
      return {ev.key: ev.run(None, out) for ev in evaluators}
    run = run()
  return {ev.key: ev.run(run, out, redo=redo) for ev in evaluators}


def run_one(workdir, evaluator: Evaluator, config=None, **load) -> dict:
  """One evaluator's result on the run in `workdir`: read when written already, else computed
  (the run loaded only then, `LoadedRun.from_workdir(workdir, config, **load)`)."""
  return run_evaluators(lambda: LoadedRun.from_workdir(workdir, config, **load), [evaluator],
                        workdir)[evaluator.key]
