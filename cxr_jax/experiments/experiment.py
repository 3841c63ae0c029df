"""run_experiment: the runs of a CV, ablation or sweep, then its tables, figure and summary.

  cv        the k fold models of the config (grid ignored): cv.json, cv.md
  ablation  grid cells x folds (default: vgg16/vgg19 x fine-tuning degree 0..5): table2.csv,
            table2.md, figure5.png (COVID accuracy vs fine-tuned blocks), ablation.json
  sweep     the same for any fields: sweep.csv, sweep.md, sweep_<field>.png, sweep.json

Started again on the same workdir it skips finished runs and resumes the unfinished one.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from cxr_jax import files
from cxr_jax.experiments import grid, plots, runner, summary, tables
from cxr_jax.experiments.study import Study, run_study

MODES = ("cv", "ablation", "sweep")


def plan(config, mode: str) -> tuple[list[grid.Axis], list[grid.Run]]:
  """The axes and runs of `mode` (validated before anything trains)."""
  if mode not in MODES:
    raise ValueError(f"unknown experiment mode {mode!r}; use one of {MODES}")
  spec = config.experiment.grid
  if mode == "cv":
    if spec:
      logging.info("--mode=cv trains the folds of the config itself; grid %r ignored", spec)
    spec = ""
  axes = grid.parse_grid(spec, config)
  if mode != "cv" and not axes:
    raise ValueError(f"--mode={mode} needs config.experiment.grid (e.g. "
                     "'model.trainable_blocks=0,1,2'); for the folds of one config use --mode=cv")
  if mode == "ablation" and axes[-1].field != "model.trainable_blocks":
    raise ValueError("--mode=ablation: the last grid axis must be model.trainable_blocks (the "
                     f"x axis of Figure 5), got {axes[-1].field}; use --mode=sweep otherwise")
  return axes, grid.expand(config, axes)


def row(run: grid.Run, directory: Path, results: dict) -> dict:
  """A finished run's test metrics, kept epoch's validation loss and external headlines."""
  return runner.load_result(directory)


def collect(runs: list[grid.Run], rows: dict, config) -> dict[str, dict]:
  """Group summaries (cells in grid order) of the finished runs' rows."""
  cells: dict[str, dict] = {}
  for run in runs:
    cell = cells.setdefault(run.cell, {"values": dict(run.values), "results": {}, "missing": []})
    if run.name in rows:
      cell["results"][run.fold] = rows[run.name]
    else:
      cell["missing"].append(run.fold)
  groups = {}
  for name, cell in cells.items():
    if not cell["results"]:
      continue
    groups[name] = dict(
        values=cell["values"], missing_folds=cell["missing"],
        **summary.summarize_group(cell["results"], float(config.eval.ci),
                                  config.experiment.select_metric))
  return groups


def write(mode: str, workdir: Path, runs: list[grid.Run], rows: dict, status: dict,
          config) -> dict:
  axes, _ = plan(config, mode)
  return write_outputs(workdir, mode, axes, collect(runs, rows, config), config, status)


def study(mode: str) -> Study:
  """cv, ablation or sweep as a study: the grid's runs, one row each, grouped by cell."""
  return Study(mode, lambda config, workdir: plan(config, mode)[1], row,
               functools.partial(write, mode))


def write_outputs(workdir: Path, mode: str, axes, groups: dict, config, status: dict) -> dict:
  """Writes the mode's files; returns the JSON document (also written)."""
  fields = [a.field for a in axes]
  won = summary.winners(groups, config.experiment.select_metric)
  doc = dict(mode=mode, grid=config.experiment.grid if mode != "cv" else "",
             axes={a.field: list(a.values) for a in axes}, status=status, winners=won,
             groups=groups)
  written = []
  if mode == "cv":
    text = ("# Cross-validation\n\n" + "".join(tables.markdown_folds(n, g) for n, g in groups.items())
            + tables.markdown_external(groups) + tables.markdown_unfinished(status))
    written += [_write(workdir / "cv.md", text)]
  else:
    stem = "table2" if mode == "ablation" else "sweep"
    title = ("Fine-tuning ablation (Lee et al. Table 2)" if mode == "ablation"
             else f"Sweep over {', '.join(fields)}")
    rows = tables.table_rows(groups, fields)
    tables.write_csv(workdir / f"{stem}.csv", rows)
    text = (tables.markdown_table(groups, float(config.eval.ci), title)
            + tables.markdown_winners(groups, won)
            + tables.markdown_by_source({n: g["by_source"] for n, g in groups.items()})
            + tables.markdown_external(groups)
            + tables.markdown_unfinished(status)
            + "\n## Folds of each group\n\n"
            + "".join(tables.markdown_folds(n, g, level=3) for n, g in groups.items()))
    written += [str(workdir / f"{stem}.csv"), _write(workdir / f"{stem}.md", text)]
    figure = ("figure5.png" if mode == "ablation"
              else f"sweep_{fields[-1].rsplit('.', 1)[-1]}.png")
    metric = config.experiment.plot_metric
    figure_title = (f"{metric} by fine-tuning degree (Lee et al. Figure 5)" if mode == "ablation"
                    else f"{metric} against {fields[-1]}")
    written.append(str(plots.plot_metric(groups, fields, metric, workdir / figure, figure_title)))
  doc["written"] = written
  json_name = {"cv": "cv.json", "ablation": "ablation.json", "sweep": "sweep.json"}[mode]
  _write(workdir / json_name, json.dumps(doc, indent=1, default=_plain))
  doc["written"].append(str(workdir / json_name))
  return doc


def _plain(value):
  return value.item() if hasattr(value, "item") else str(value)


def _write(path: Path, text: str) -> str:
  return str(files.write_atomic(path, text))


def run_experiment(config, workdir: str | Path, mode: str, train_fn=None) -> dict:
  """Trains the unfinished runs of the experiment and writes its outputs into `workdir`.

  Raises ExperimentIncomplete after writing the outputs if a run failed.
  """
  return run_study(study(mode), config, workdir, train_fn)
