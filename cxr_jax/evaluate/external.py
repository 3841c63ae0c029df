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
from cxr_jax.evaluate.inference import make_predict_fn, predict_arrays

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


def evaluate_external(workdir, specs, *, which: str = "best", trained=None) -> dict:
  """Evaluates the kept model of `workdir` on each external spec; {name: metrics}."""
  from cxr_jax import data
  from cxr_jax.evaluate.workdir import (
    LoadedSplit,
    add_calibration,
    data_batches,
    eval_setting,
    score,
    write_evaluation,
  )

  trained = trained or checkpoint.load_trained(workdir, which=which)
  if trained.config.data.get("task", "classes") != "classes":
    raise ValueError(f"{workdir} is a data.task={trained.config.data.task!r} run; external "
                     "evaluation serves the 3-class task")
  results, used, fit = {}, set(), None
  predict_fn = make_predict_fn(trained.model)  # one compilation per batch shape for all sets
  for spec in specs:
    check_source(spec)
    name = external_name(spec)
    while name in used:
      name += "_"
    used.add(name)
    config = external_data_config(trained.config, spec)
    built = data.build_dataset(config.data, every_class=False)
    meta = built.metadata
    ids = meta["id"][meta["label"] != NO_LABEL]
    loaded = LoadedSplit(trained, config, built, ids)
    batches = data_batches(loaded, batch_size=int(config.train.eval_batch_size))
    probs, labels, ids = predict_arrays(trained.model, trained.variables, batches,
                                        predict_fn=predict_fn)
    metrics = score(config, labels, probs, meta, ids)
    if eval_setting(config, "temperature_scaling", True):
      fit = fit or run_temperature(workdir, trained, predict_fn)
      add_calibration(metrics, fit, labels, probs)
    metrics["unreadable"] = list(built.rejects)
    metrics["duplicates"] = list(built.duplicates)  # same bytes as a kept file: scored once
    metrics["run"] = dict(workdir=str(workdir), external=spec, checkpoint=which,
                          dataset=built.version, preprocessing=trained.preprocessing)
    metrics["headline"] = headline(metrics)
    out = Path(workdir) / OUT_DIR / name
    title = f"External evaluation of {Path(workdir).name} on {name} ({which} checkpoint)"
    write_evaluation(out, metrics, title, ids, labels, probs, meta)
    logging.info("external evaluation of %s on %s: accuracy %.4f over %d images; wrote %s",
                 workdir, name, metrics["accuracy"], len(ids), out)
    results[name] = metrics
  return results


def run_temperature(workdir, trained, predict_fn=None) -> dict:
  """The temperature of the run's own validation split (`workdir.validation_fit`): the one its
  test evaluation recorded in metrics.json for these parameters, else fitted now."""
  from cxr_jax import data
  from cxr_jax.evaluate.workdir import model_digest, saved_validation_fit, validation_fit

  saved = saved_validation_fit(workdir, model_digest(trained.variables))
  if saved is not None:
    return saved
  return validation_fit(trained, trained.config, data.build_dataset(trained.config.data),
                        predict_fn=predict_fn)


def evaluate_missing(workdir, specs) -> list[str]:
  """Evaluates the specs whose W/external/<name>/metrics.json is not there yet (an experiment's
  finished runs, when an external set was added after they trained); returns their names."""
  missing = [s for s in specs
             if not (Path(workdir) / OUT_DIR / external_name(s) / checkpoint.METRICS_FILE).is_file()]
  return list(evaluate_external(workdir, missing)) if missing else []


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
