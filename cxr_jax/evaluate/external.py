"""External evaluation: a trained run's kept model over every image of collections it never saw.

  python launch.py --mode=evaluate --workdir=W --external=manifest:../shared/data/cxr-external

Each `--external` reader spec (`cxr_jax.data.readers`: manifest:, folder:, ieee8023:, nih:) is
built into its own dataset with the run's own preprocessing (size, CLAHE: the run's `data` config
with only `sources` replaced; cached and versioned like any build) and scored by the kept
parameters. External sets usually lack a class: every metric that is defined is reported, the
others say why (`cxr_jax.evaluate.metrics`), and the within-source figures (share called each
class, COVID AUC, normal-vs-pneumonia AUC) are the ones to read. Outputs go to
`W/external/<name>/`: metrics.json, report.md, predictions.csv and the plots. Calibration before
and after temperature scaling uses the temperature of the run's own validation split: the one its
test evaluation recorded for the same parameters, else fitted once per call.

This path is explicit: evaluating a run on its *own* data with another config is refused
(`workdir.check_compatible`); a different collection is named here instead.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import re
from pathlib import Path

from cxr_jax import checkpoint
from cxr_jax.data.records import LABELS, NO_LABEL
from cxr_jax.evaluate.evaluator import Evaluator

OUT_DIR = "external"


def external_name(spec: str) -> str:
  """The folder name of a spec's collection ('manifest:/x/cxr-external' -> 'cxr-external')."""
  from cxr_jax.data import readers

  _, path, _ = readers.parse_source(spec)
  name = path.parent.name if path.suffix.lower() == ".csv" else path.name
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "external"


def check_source(spec: str):
  """Reads `spec` (no decoding) and fails clearly if it cannot serve as an evaluation set: the
  path does not exist, no image is usable, or its labels are outside the project's classes."""
  from cxr_jax.data import readers

  try:
    scan = readers.read_source(spec)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"external source {spec!r}: {e}") from e
  unknown = collections.Counter(
      m.group(1) for r in scan.rejects if (m := re.match(r"unknown label '([^']*)'", r.reason)))
  if unknown:
    raise ValueError(
        f"external source {spec!r} uses labels outside {LABELS}: {dict(unknown)}. Map each with "
        f"an option after the path, '{spec};{next(iter(unknown))}=LABEL' (LABEL one of {LABELS}),"
        f" or leave its rows out with '{spec};{next(iter(unknown))}='.")
  if not scan.records:
    reasons = "; ".join(f"{r.file}: {r.reason}" for r in scan.rejects[:5])
    raise ValueError(f"external source {spec!r} has no usable image"
                     + (f" ({len(scan.rejects)} rejected, e.g. {reasons})" if reasons else ""))
  return scan


def external_data_config(run_config, spec: str):
  """The run's data config with `sources` replaced: the images get exactly the run's
  preprocessing, and the build is cached under its own content hash."""
  config = copy.deepcopy(run_config)
  with config.unlocked():
    config.data.sources = (spec,)
  return config


def external_names(specs) -> dict[str, str]:
  """{spec: folder name} of specs evaluated together; a name taken already gets a "_"."""
  names = {}
  for spec in specs:
    name = external_name(spec)
    while name in names.values():
      name += "_"
    names[spec] = name
  return names


def evaluate_external(workdir, specs, *, which: str = "best", run=None) -> dict:
  """Evaluates the kept model of `workdir` (or of `run`, a LoadedRun) on each external spec,
  again where it was evaluated before; {name: metrics}."""
  from cxr_jax.evaluate.run import LoadedRun

  run = run or LoadedRun.from_workdir(workdir, which=which)
  return {name: External(spec, name).run(run, redo=True)
          for spec, name in external_names(specs).items()}


def evaluate_spec(run, spec: str, out: Path) -> dict:
  """The kept model of `run` (a LoadedRun) on every labelled image of `spec`, written to `out`."""
  from cxr_jax import data
  from cxr_jax.evaluate import ood
  from cxr_jax.evaluate.run import LoadedSplit
  from cxr_jax.evaluate.workdir import add_calibration, eval_setting, score, write_evaluation

  run.check_classes("External evaluation")
  check_source(spec)
  trained = run.trained
  config = external_data_config(trained.config, spec)
  built = data.build_dataset(config.data, every_class=False)
  meta = built.metadata
  loaded = LoadedSplit(trained, config, built, meta["id"][meta["label"] != NO_LABEL])
  pred = run.predictions(("external", spec), loaded)
  probs, labels, ids = pred.probs, pred.labels, pred.ids
  metrics = score(config, labels, probs, meta, ids)
  if eval_setting(config, "temperature_scaling", True):
    add_calibration(metrics, run.recorded_validation_fit(), labels, probs)
  if eval_setting(config, "ood", True):   # told apart from the run's test split
    outputs, ood_labels, ood_ids = ood.run_outputs(run, ("external", spec), loaded)
    metrics["ood"] = ood.run_section(run, outputs, ood_labels, meta["source"][ood_ids],
                                     is_reference=False)
  metrics["unreadable"] = list(built.rejects)
  metrics["duplicates"] = list(built.duplicates)  # same bytes as a kept file: scored once
  metrics["run"] = dict(workdir=str(run.workdir), external=spec, checkpoint=run.which,
                        dataset=built.version, preprocessing=trained.preprocessing)
  metrics["headline"] = headline(metrics)
  title = f"External evaluation of {run.workdir.name} on {out.name} ({run.which} checkpoint)"
  write_evaluation(out, metrics, title, ids, labels, probs, meta)
  logging.info("external evaluation of %s on %s: accuracy %.4f over %d images; wrote %s",
               run.workdir, out.name, metrics["accuracy"], len(ids), out)
  return metrics


def run_temperature(workdir, trained) -> dict:
  """The temperature of the run's own validation split: the one its test evaluation recorded in
  metrics.json for these parameters, else fitted now (`LoadedRun.recorded_validation_fit`)."""
  from cxr_jax.evaluate.run import LoadedRun

  return LoadedRun(workdir, trained).recorded_validation_fit()


def evaluate_missing(workdir, specs) -> list[str]:
  """Evaluates the specs whose W/external/<name>/metrics.json is not there yet (an experiment's
  finished runs, when an external set was added after they trained); returns their names. The
  run is loaded only when one is missing."""
  from cxr_jax.evaluate.evaluator import run_evaluators
  from cxr_jax.evaluate.run import LoadedRun

  missing = [ev for ev in map(External, specs) if not ev.done(Path(workdir))]
  run_evaluators(lambda: LoadedRun.from_workdir(workdir), missing, workdir)
  return [Path(ev.name).name for ev in missing]


def load_headlines(workdir) -> dict:
  """{name: headline} of every external evaluation written in `workdir`."""
  return {p.parent.name: json.loads(p.read_text())["headline"]
          for p in sorted((Path(workdir) / OUT_DIR).glob(f"*/{checkpoint.METRICS_FILE}"))}


def headline(metrics: dict) -> dict:
  """The figures that show the gap at a glance: accuracy, and per source the share called each
  class, the sensitivity of each class it holds, and its within-source AUCs (None: undefined)."""
  per_source = {}
  for source, s in metrics.get("within_source", {}).items():
    entry = dict(images=s["num_examples"],
                 accuracy=round(metrics["by_source"][source]["accuracy"], 4),
                 called={c: round(v, 4) for c, v in s["called"].items()},
                 sensitivity={c: round(v, 4) for c, v in s["sensitivity"].items()})
    for key in ("covid_auc", "normal_vs_pneumonia_auc"):
      value = (s.get(key) or {}).get("value")
      entry[key] = None if value is None else round(value, 4)
    per_source[source] = entry
  return dict(images=metrics["num_examples"], accuracy=round(metrics["accuracy"], 4),
              accuracy_ci=(metrics.get("intervals") or {}).get("accuracy"), by_source=per_source)


def format_headline(name: str, h: dict) -> str:
  """One short paragraph for the terminal."""
  ci = h.get("accuracy_ci") or {}
  interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci.get("low") is not None else ""
  lines = [f"external {name}: {h['images']} images, accuracy {h['accuracy']:.3f}{interval}"]
  for source, s in h["by_source"].items():
    called = ", ".join(f"{100 * v:.0f} % {c}" for c, v in s["called"].items())
    sens = ", ".join(f"{c} {v:.2f}" for c, v in s["sensitivity"].items())
    aucs = "".join(f", {label} {s[key]:.3f}" for key, label in
                   (("covid_auc", "COVID AUC"), ("normal_vs_pneumonia_auc", "normal-vs-pneumonia AUC"))
                   if s[key] is not None)
    lines.append(f"  {source} ({s['images']}): called {called}; sensitivity {sens}{aucs}")
  return "\n".join(lines)


class External(Evaluator):
  """The kept model on a collection outside the run's data (`evaluate_spec`), written
  to external/<name>/."""

  result_file, writes_itself = checkpoint.METRICS_FILE, True

  def __init__(self, spec: str, name: str | None = None):
    self.spec = spec
    self.name = f"{OUT_DIR}/{name or external_name(spec)}"

  def compute(self, run, folder):
    return evaluate_spec(run, self.spec, folder)
