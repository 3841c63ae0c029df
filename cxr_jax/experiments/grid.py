"""Experiment grids: which config fields vary, and the runs (grid cell x fold) they expand to.

A grid is written in the config as one string, `config.experiment.grid`:

  "model.arch=vgg16,vgg19;model.trainable_blocks=0,1,2,3,4,5"

axes separated by ';', values by ','. Each value is parsed with the type of the field it
replaces in the base config, so a typo in a field name or a value fails before anything trains.
"""

from __future__ import annotations

import dataclasses
import itertools

import ml_collections

# Short names used in run folder names and table labels; other fields use their last component.
_SHORT = {"model.trainable_blocks": "ft", "data.image_size": "px", "data.train_fraction": "frac",
          "train.mixup_alpha": "mixup", "data.held_out_source": "without_"}


@dataclasses.dataclass(frozen=True)
class Axis:
  field: str              # dotted config path, e.g. "model.trainable_blocks"
  values: tuple


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a grid cell's config for one fold, trained in workdir runs/<name>."""
  cell: str               # the grid cell (group of folds), e.g. "vgg16_ft2"
  fold: int
  values: tuple           # ((field, value), ...) of the cell
  config: ml_collections.ConfigDict
  needs: tuple = ()       # names of runs whose kept model this one starts from (twice transfer)

  @property
  def name(self) -> str:
    return f"{self.cell}_fold{self.fold}"


def get_field(config, field: str):
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      raise ValueError(f"config.experiment.grid: unknown config field {field!r}")
    node = node[part]
  return node


def set_field(config, field: str, value) -> None:
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _parse_value(field: str, text: str, current):
  text = text.strip()
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
  except ValueError:
    raise ValueError(f"config.experiment.grid: {text!r} is not a valid "
                     f"{type(current).__name__} for {field}") from None
  raise ValueError(f"config.experiment.grid: {field} is a {type(current).__name__}; only int, "
                   "float, bool and str fields can be swept")


def parse_grid(spec: str, config) -> list[Axis]:
  """The axes of `spec` ("field=v1,v2;field=v1"), values typed like the config's fields."""
  axes = []
  for item in filter(None, (part.strip() for part in (spec or "").split(";"))):
    field, sep, values = item.partition("=")
    field = field.strip()
    if not sep or not values.strip():
      raise ValueError(f"config.experiment.grid: {item!r} is not 'field=v1,v2,...'")
    current = get_field(config, field)
    parsed = tuple(_parse_value(field, v, current) for v in values.split(",") if v.strip())
    if len(set(parsed)) != len(parsed):
      raise ValueError(f"config.experiment.grid: repeated value in {item!r}")
    if field in (a.field for a in axes):
      raise ValueError(f"config.experiment.grid: {field} appears twice")
    axes.append(Axis(field, parsed))
  return axes


def value_label(field: str, value) -> str:
  """'vgg16', 'ft2', 'px224', 'frac0.25': a value as it appears in run names and tables."""
  if field == "model.arch":
    return str(value)
  prefix = _SHORT.get(field, field.rsplit(".", 1)[-1])
  return f"{prefix}{value}"


def cell_name(values: tuple) -> str:
  return "_".join(value_label(f, v) for f, v in values) or "cv"


def folds_to_run(config) -> list[int]:
  """Folds 0..n-1 with n = experiment.num_folds, or every data.num_folds fold when it is 0."""
  available = max(int(config.data.num_folds), 1)
  wanted = int(config.experiment.num_folds) or available
  if not 1 <= wanted <= available:
    raise ValueError(f"config.experiment.num_folds={wanted}: must be in 1..data.num_folds "
                     f"({available}), or 0 for all")
  return list(range(wanted))


def expand(config, axes: list[Axis]) -> list[Run]:
  """Every (cell, fold) run, cells in grid order (last axis fastest), folds innermost."""
  runs = []
  for combo in itertools.product(*(a.values for a in axes)):
    values = tuple(zip((a.field for a in axes), combo, strict=True))
    for fold in folds_to_run(config):
      run_config = config.copy_and_resolve_references()
      for field, value in values:
        set_field(run_config, field, value)
      run_config.data.fold = fold
      runs.append(Run(cell_name(values), fold, values, run_config))
  return runs
