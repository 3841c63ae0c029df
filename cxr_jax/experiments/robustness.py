"""The source-robustness ablation: the baseline, each measure alone, and a combination, every run
audited the same way.

  python launch.py --config=configs/robustness.py --workdir=W --mode=robustness \
      --external=manifest:../shared/data/cxr-external

One run per measure (x folds) through the resumable runner (`runs/<measure>_fold<k>/`). Each run
is the trainer's (test split with patient-group CIs, within-source AUCs, calibration, external
sets of config.eval.external) with two more evaluators named in its config.eval.evaluators: the
validation split (`eval_val/`, what chooses) and the audit's probes on its kept model, source
recognition from its features and the lungs-blanked / outside-blanked probes
(`robustness_probes.json`). Tables: robustness.md, robustness.csv, robustness.json, and
robustness.png.

Choose by the validation split (of the data trained on: cxr3, or cxr3 + cxr-plus) and
leave-one-source-out; the external columns are for reporting (they are never trained on, and
must never pick the recipe).
"""

from __future__ import annotations

from pathlib import Path

from cxr_jax import machine
from cxr_jax.evaluate.report import num
from cxr_jax.experiments import grid, runner, tables
from cxr_jax.experiments.study import Study, run_study, with_evaluators

# What each run evaluates beyond the trainer's test split and external sets (evaluators.REGISTRY).
EVALUATORS = ("val", "robustness_probes")

# Each measure as config overrides (dotted field -> value); the fields are documented in
# cxr_jax/config.py. "combined" is config.experiment.combine's measures together.
MEASURES = {
    "baseline": {},
    "acquisition": {"data.acquisition": True},
    "equalize": {"data.intensity": "equalize"},
    "lung_crop": {"data.crop": "lungs"},
    "group_balance": {"data.group_balance": True},
    "group_dro": {"train.group_dro_step": 0.02},
    "dann": {"train.dann_weight": 0.3},
    # On cxr3 + cxr-plus DANN at 0.3 diverged (the source loss the backbone maximises grew to 9e6
    # once the schedule passed ~0.2; results/robustness_multisource_128px/dann_diverged.txt): the
    # same adversary a third as strong, to tell "DANN fails here" from "0.3 is too strong here".
    "dann_0.1": {"train.dann_weight": 0.1},
    # ... which diverged too: the bounded adversary (train.dann_loss, cxr_jax/train/robust.py).
    "dann_confusion": {"train.dann_weight": 0.3, "train.dann_loss": "confusion"},
}
COMBINED = "combined"


def measure_overrides(config, name: str) -> dict:
  """The overrides of measure `name` (for "combined": those of config.experiment.combine)."""
  if name == COMBINED:
    parts = [p.strip() for p in str(config.experiment.combine).split(",") if p.strip()]
    if not parts:
      raise ValueError("measure 'combined' needs config.experiment.combine, e.g. "
                       "'acquisition,group_dro'")
    out = {}
    for part in parts:
      out.update(measure_overrides(config, part))
    return out
  if name not in MEASURES:
    raise ValueError(f"config.experiment.measures: unknown measure {name!r}; known: "
                     f"{sorted(MEASURES) + [COMBINED]}")
  return MEASURES[name]


def plan(config, workdir=None) -> list[grid.Run]:
  """One run per (measure, fold) of config.experiment.measures, configs checked before training."""
  names = [n.strip() for n in str(config.experiment.measures).split(",") if n.strip()]
  if len(set(names)) != len(names) or not names:
    raise ValueError(f"config.experiment.measures={config.experiment.measures!r}: name each "
                     "measure once")
  runs = []
  for name in names:
    overrides = measure_overrides(config, name)
    base = with_evaluators(config.copy_and_resolve_references(), *EVALUATORS)
    for field, value in overrides.items():
      grid.get_field(base, field)   # unknown fields fail here, before anything trains
      grid.set_field(base, field, value)
    for fold in grid.folds_to_run(base):
      run_config = base.copy_and_resolve_references()
      run_config.data.fold = fold
      runs.append(grid.Run(name, fold, tuple(overrides.items()), run_config))
  return runs


def row(run: grid.Run, directory: Path, results: dict) -> dict:
  from cxr_jax import evaluate

  (probes,) = evaluate.from_config(None, ["robustness_probes"])
  return table_row(run, runner.load_result(directory), results[probes.key],
                   results[evaluate.Split("val").key])


def write(workdir: Path, runs: list[grid.Run], rows: dict, status: dict, config) -> dict:
  """The tables and the figure over the finished runs' rows."""
  table = list(rows.values())
  doc = dict(mode="robustness", machine=machine.describe(), status=status, rows=table)
  written = tables.write_table(workdir, "robustness", doc, table, markdown(table, status))
  if table:
    written.append(write_figure(table, workdir / "robustness.png"))
  doc["written"] = written
  return doc


STUDY = Study("robustness ablation", plan, row, write)


def run_robustness(config, workdir, train_fn=None) -> dict:
  """Trains (and probes) the unfinished runs, then writes the tables and the figure."""
  return run_study(STUDY, config, workdir, train_fn)


def _get(tree, *keys):
  for key in keys:
    if not isinstance(tree, dict) or tree.get(key) is None:
      return None
    tree = tree[key]
  return tree


def external_columns(external: dict) -> dict:
  """Per external set and source: accuracy, share called COVID, the sensitivity of COVID where
  the source holds it, and the within-source AUCs it defines."""
  out = {}
  for name, h in external.items():
    out[f"{name}/accuracy"] = h.get("accuracy")
    for source, s in h.get("by_source", {}).items():
      out[f"{source}/called_covid"] = _get(s, "called", "covid")
      if "covid" in (s.get("sensitivity") or {}):
        out[f"{source}/covid_sensitivity"] = s["sensitivity"]["covid"]
      for key in ("covid_auc", "normal_vs_pneumonia_auc"):
        if s.get(key) is not None:
          out[f"{source}/{key}"] = s[key]
  return out


def table_row(run: grid.Run, result: dict, probes: dict, val: dict) -> dict:
  """One run's figures: validation (what chooses), internal test, within-source, external,
  probes, calibration."""
  m = result["metrics"]
  lungs = probes.get("lung_probes") or {}
  row = {"measure": run.cell, "fold": run.fold,
         "overrides": "; ".join(f"{k}={v}" for k, v in run.values) or "-",
         "val_loss": result.get("val_loss"),
         "val_accuracy": val.get("accuracy"),
         "val_ieee8023_covid_auc": _get(val, "within_source", "ieee8023", "covid_auc", "value"),
         "test_accuracy": m.get("accuracy"),
         "test_accuracy_low": _get(m, "intervals", "accuracy", "low"),
         "test_accuracy_high": _get(m, "intervals", "accuracy", "high"),
         "test_covid_auc": _get(m, "per_class", "covid", "roc_auc"),
         "source_only_accuracy": m.get("source_only_accuracy"),
         "ieee8023_covid_auc": _get(m, "within_source", "ieee8023", "covid_auc", "value"),
         "ece_before": _get(m, "calibration", "ece_before"),
         "ece_after": _get(m, "calibration", "ece_after"),
         "lungs_blanked_accuracy": _get(lungs, "lungs_blanked", "accuracy"),
         "outside_blanked_accuracy": _get(lungs, "outside_blanked", "accuracy"),
         "source_probe_balanced_accuracy": _get(probes, "source_recognition", "kept_model",
                                                "balanced_accuracy")}
  row.update(external_columns(result.get("external", {})))
  return row


_MAIN_COLUMNS = (
    ("val_loss", "val. loss"), ("val_accuracy", "val. accuracy"),
    ("val_ieee8023_covid_auc", "val. COVID AUC in ieee8023"), ("test_accuracy", "test accuracy"),
    ("test_covid_auc", "COVID AUC"), ("ieee8023_covid_auc", "COVID AUC in ieee8023"),
    ("source_only_accuracy", "source-only rule"), ("lungs_blanked_accuracy", "lungs blanked acc."),
    ("outside_blanked_accuracy", "only lungs acc."),
    ("source_probe_balanced_accuracy", "source probe bal. acc."),
    ("ece_before", "ECE"), ("ece_after", "ECE (T-scaled)"))


def markdown(rows: list[dict], status: dict) -> str:
  lines = ["# Source-robustness ablation", "",
           f"Machine: {machine.summary()}. One row per measure (fold in brackets); `-`: "
           "undefined or not measured. The validation split of the data trained on (loss, "
           "accuracy, COVID AUC inside ieee8023) and leave-one-source-out are what choose; test "
           "and external columns report.", "",
           "## The data trained on: validation, internal test, within-source, probes", "",
           "| measure | " + " | ".join(h for _, h in _MAIN_COLUMNS) + " |",
           "| --- |" + " --- |" * len(_MAIN_COLUMNS)]
  for r in rows:
    cells = []
    for key, _ in _MAIN_COLUMNS:
      text = num(r.get(key))
      if key == "test_accuracy" and r.get("test_accuracy_low") is not None:
        text += f" [{r['test_accuracy_low']:.3f}, {r['test_accuracy_high']:.3f}]"
      cells.append(text)
    lines.append(f"| {r['measure']} ({r['fold']}) | " + " | ".join(cells) + " |")
  external = sorted({k for r in rows for k in r if "/" in k})
  if external:
    lines += ["", "## External sets (evaluation only, never trained on or chosen by)", "",
              "| measure | " + " | ".join(external) + " |", "| --- |" + " --- |" * len(external)]
    for r in rows:
      lines.append(f"| {r['measure']} ({r['fold']}) | "
                   + " | ".join(num(r.get(k)) for k in external) + " |")
  lines += ["", "Overrides of each measure:", ""]
  lines += [f"- {r['measure']}: {r['overrides']}" for r in rows]
  return "\n".join(lines) + "\n" + tables.markdown_unfinished(status)


_FIGURE = (("test_accuracy", "internal test accuracy"),
           ("ieee8023_covid_auc", "COVID AUC inside ieee8023"),
           ("lungs_blanked_accuracy", "accuracy, lungs blanked"),
           ("source_probe_balanced_accuracy", "source probe (bal. acc.)"))


def write_figure(rows: list[dict], path: Path) -> str:
  """Grouped bars: per measure, the internal, within-source, probe and external headline figures."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  external = sorted({k for r in rows for k in r
                     if k.endswith(("/accuracy", "/called_covid", "/covid_sensitivity"))})
  series = list(_FIGURE) + [(k, k) for k in external]
  x = np.arange(len(rows))
  width = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(rows)), 4.5))
  for i, (key, label) in enumerate(series):
    values = [np.nan if r.get(key) is None else r[key] for r in rows]
    ax.bar(x + (i - len(series) / 2 + 0.5) * width, values, width, label=label)
  ax.set_xticks(x, [f"{r['measure']}" for r in rows], rotation=20)
  ax.set_ylim(0, 1)
  ax.set_title("Source-robustness ablation (external: evaluation only)")
  # Below the axes: beside them, a long series name squeezed the bars and clipped the title.
  ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return str(path)
