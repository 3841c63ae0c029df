"""Leave-one-source-out: for each source, a model trained without it, scored on all of it.

  python launch.py --config=configs/quickstart.py --workdir=W --mode=loso \
      --config.experiment.num_folds=1 [--config.experiment.loso_sources=ieee8023,hannover]

One run per held-out source (x folds, as the other experiments), through the same resumable
runner (`runs/without_<source>_fold<k>/`): `data.held_out_source` moves that source's patient
groups out of train / val / test (`cxr_jax.data.splits.hold_out_source`, which asserts it); the
trainer evaluates the rest's test split as usual and, named in the run's config.eval.evaluators,
the "held_out" split, every labelled image of the source, into the run's `eval_held_out/`.
Tables: loso.md, loso.csv, loso.json; figure loso.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxr_jax.evaluate.report import MISSING, num
from cxr_jax.experiments import grid, tables
from cxr_jax.experiments.study import Study, run_study, with_evaluators

HELD_OUT = "held_out"


def sources_to_hold_out(config) -> list[str]:
  """config.experiment.loso_sources, or every source of the data (labelled images) when empty."""
  names = [s.strip() for s in str(config.experiment.get("loso_sources", "")).split(",") if s.strip()]
  if names:
    return names
  from cxr_jax import data

  built = data.build_dataset(config.data)
  meta = built.metadata
  return sorted(set(meta["source"][meta["label"] != data.NO_LABEL].tolist()))


REFERENCE = "all_sources"


def plan(config, workdir=None) -> list[grid.Run]:
  """One run per (held-out source, fold), each evaluating its held-out source; unknown sources
  fail in the splits before training. With experiment.loso_reference, also the run on every
  source (cell "all_sources"): the same source's figures when it is a seen collection (its
  test-split patients) stand beside the held-out ones."""
  if config.data.get("held_out_source"):
    raise ValueError("--mode=loso sets data.held_out_source per run; leave it empty")
  spec = "data.held_out_source=" + ",".join(sources_to_hold_out(config))
  runs = grid.expand(config, grid.parse_grid(spec, config))
  for run in runs:
    with_evaluators(run.config, HELD_OUT)
  if config.experiment.get("loso_reference", True):
    runs += [dataclasses.replace(run, cell=REFERENCE) for run in grid.expand(config, [])]
  return runs


def row(run: grid.Run, directory: Path, results: dict) -> dict:
  """A held-out run's row (table_row); the reference run's figures of every source."""
  from cxr_jax import evaluate

  internal = results[evaluate.Split("test").key]
  if run.cell == REFERENCE:
    return {REFERENCE: True, "fold": run.fold, **_reference_summary(internal),
            "within_source": internal.get("within_source") or {}}
  return table_row(run, results[evaluate.Split(HELD_OUT).key], internal)


def write(workdir: Path, runs: list[grid.Run], rows: dict, status: dict, config) -> dict:
  """loso.md / .csv / .json and loso.png: the held-out rows, each beside its source's figures as a
  seen collection from the reference run of its fold."""
  reference = {r["fold"]: r for r in rows.values() if r.get(REFERENCE)}
  table = [with_seen(r, reference.get(r["fold"])) for r in rows.values() if not r.get(REFERENCE)]
  doc = dict(mode="loso", status=status, rows=table,
             reference={fold: {k: r[k] for k in ("test_images", "test_accuracy", "low", "high")}
                        for fold, r in reference.items()})
  doc["written"] = tables.write_table(workdir, "loso", doc, table, markdown(table, status, doc))
  if table:
    doc["written"].append(write_figure(table, workdir / "loso.png"))
  return doc


STUDY = Study("leave-one-source-out", plan, row, write)


def run_loso(config, workdir, train_fn=None) -> dict:
  """Trains the unfinished runs (each evaluating its held-out source), writes the tables and
  figure."""
  return run_study(STUDY, config, workdir, train_fn)


def defined_figures(entry: dict) -> dict:
  """The figures one source's images can define, from its within-source entry
  (cxr_jax.evaluate.summary.within_source); a figure the source cannot define is absent, never 0:
  COVID-vs-other AUC (COVID and other images), COVID sensitivity (COVID images), the share of its
  non-COVID images called COVID (= 1 - COVID specificity; non-COVID images), normal-vs-pneumonia
  AUC (both)."""
  n = entry["num_examples"]
  n_covid = entry["labels"].get("covid", 0)
  out = {}
  if n_covid and n > n_covid:
    out["covid_auc"] = entry["covid_auc"]["value"]
  if n_covid:
    out["covid_sensitivity"] = entry["sensitivity"]["covid"]
  if n > n_covid:
    # Calls of COVID among all images minus those among the COVID images, over the rest.
    covid_calls = entry["called"]["covid"] * n - entry["sensitivity"].get("covid", 0.0) * n_covid
    out["non_covid_called_covid"] = max(covid_calls, 0.0) / (n - n_covid)
  auc = (entry.get("normal_vs_pneumonia_auc") or {}).get("value")
  if auc is not None:
    out["normal_vs_pneumonia_auc"] = auc
  return out


FIGURES = {"covid_auc": "COVID AUC", "covid_sensitivity": "COVID sens.",
           "non_covid_called_covid": "non-COVID called COVID",
           "normal_vs_pneumonia_auc": "normal-vs-pneumonia AUC"}


def table_row(run: grid.Run, held: dict, internal: dict) -> dict:
  """Held-out source: its label mix, accuracy and the figures it defines (held_*), and the rest's
  internal test accuracy and COVID AUC."""
  source = run.config.data.held_out_source
  names = held["class_names"]
  row = {"held_out_source": source, "fold": run.fold, "images": held["num_examples"],
         **{f"n_{c}": n for c, n in zip(names, held["label_counts"], strict=True)},
         "accuracy": held["accuracy"]}
  row.update({f"held_{k}": v for k, v in
              defined_figures(held.get("within_source", {})[source]).items()})
  row["rest_test_images"] = internal.get("num_examples")
  row["rest_test_accuracy"] = internal.get("accuracy")
  row["rest_test_covid_auc"] = (internal.get("per_class", {}).get("covid") or {}).get("roc_auc")
  return row


def with_seen(row: dict, reference: dict | None) -> dict:
  """`row` with the same figures of its source as a seen collection, on the all-sources run's
  test split (seen_*), placed after the held-out ones; unchanged without that run."""
  seen = ((reference or {}).get("within_source") or {}).get(row["held_out_source"])
  if not seen:
    return row
  keys = list(row)
  at = keys.index("rest_test_images")
  figures = {"seen_images": seen["num_examples"],
             **{f"seen_{k}": v for k, v in defined_figures(seen).items()}}
  return {**{k: row[k] for k in keys[:at]}, **figures, **{k: row[k] for k in keys[at:]}}


def _reference_summary(metrics: dict) -> dict:
  interval = (metrics.get("intervals") or {}).get("accuracy") or {}
  return {"test_images": metrics.get("num_examples"), "test_accuracy": metrics.get("accuracy"),
          "low": interval.get("low"), "high": interval.get("high")}


def _pair(row: dict, key: str) -> str:
  """'held / seen' where the source defines the figure, '-' where it does not."""
  if f"held_{key}" not in row:
    return MISSING
  seen = row.get(f"seen_{key}")
  return f"{num(row[f'held_{key}'])} / {num(seen)}"


def markdown(rows: list[dict], status: dict, doc: dict | None = None) -> str:
  lines = ["# Leave one source out", "",
           "Each row: a model trained without the source's patient groups, scored on every "
           "labelled image of it (held out), beside the same figure for the source as a seen "
           "collection (the model trained on every source, on the source's test-split patients). "
           "Only the figures a source's labels define: `-` where it cannot (e.g. no COVID image "
           "for a COVID AUC). Cells: held out / seen.", ""]
  for fold, ref in sorted(((doc or {}).get("reference") or {}).items()):
    lines += [f"All sources (fold {fold}): test accuracy {num(ref['test_accuracy'])} "
              f"[{num(ref['low'])}, {num(ref['high'])}] on {ref['test_images']} images.", ""]
  lines += ["| held-out source | fold | images (c/n/p) | accuracy | " +
            " | ".join(FIGURES.values()) + " | rest test accuracy | rest COVID AUC |",
            "| --- |" + " --- |" * (5 + len(FIGURES))]
  for r in rows:
    lines.append(
        f"| {r['held_out_source']} | {r['fold']} | {r['images']} ({r['n_covid']}/{r['n_normal']}/"
        f"{r['n_pneumonia']}) | {num(r['accuracy'])} | "
        + " | ".join(_pair(r, k) for k in FIGURES)
        + f" | {num(r['rest_test_accuracy'])} | {num(r['rest_test_covid_auc'])} |")
  return "\n".join(lines) + "\n" + tables.markdown_unfinished(status)


def write_figure(rows: list[dict], path: Path) -> str:
  """One row per (source, figure it defines): held out (filled) against seen (open), joined by a
  line; for non-COVID called COVID lower is better, for the others higher."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  items = [(r, k) for r in rows for k in FIGURES if f"held_{k}" in r]
  fig, ax = plt.subplots(figsize=(7, 0.32 * len(items) + 1.2))
  for y, (r, key) in enumerate(items):
    held, seen = r[f"held_{key}"], r.get(f"seen_{key}")
    if seen is not None:
      ax.plot([held, seen], [y, y], color="0.7", zorder=1)
      ax.scatter([seen], [y], facecolors="none", edgecolors="C0", zorder=2,
                 label="seen collection" if y == 0 else None)
    ax.scatter([held], [y], color="C3", zorder=3, label="held out" if y == 0 else None)
  ax.set_yticks(range(len(items)),
                [f"{r['held_out_source']}: {FIGURES[k]}" for r, k in items], fontsize=7)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_title("Leave one source out: held out vs seen", fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return str(path)
