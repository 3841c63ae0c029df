"""evaluate_workdir: run a saved model over a split and write metrics.json, plots and report.md."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import jax
import numpy as np

from cxr_jax import checkpoint, files
from cxr_jax.data.records import LABELS
from cxr_jax.evaluate import calibration
from cxr_jax.evaluate.inference import make_predict_fn, predict_arrays
from cxr_jax.evaluate.plots import write_plots
from cxr_jax.evaluate.report import render_report
from cxr_jax.evaluate.summary import compute_metrics

# Fields that change what the saved parameters compute, or which images are this run's test split;
# a config given at evaluation time must agree with the run's config on every one. Other data is
# evaluated explicitly (cxr_jax.evaluate.external), never as a side effect of a changed config.
_MODEL_FIELDS = ("arch", "num_classes", "head", "hidden")
_INPUT_FIELDS = ("image_size", "clahe", "clahe_clip_limit", "clahe_tile_grid", "crop",
                 "crop_margin", "intensity", "intensity_in_lungs")
# What a saved config from before a field existed ran with.
_DATA_DEFAULTS = dict(task="classes", crop="none", crop_margin=0.05, intensity="none",
                      intensity_in_lungs=False)
_SPLIT_FIELDS = ("sources", "task", "split_seed", "test_fraction", "num_folds", "fold",
                 "train_fraction")


@dataclasses.dataclass
class LoadedSplit:
  """A trained model with the examples of one split of its data."""
  trained: checkpoint.Trained
  config: object           # the config used for data and evaluation settings
  built: object            # cxr_jax.data.BuiltDataset
  ids: np.ndarray          # example ids of the split


def check_compatible(run_config, config) -> None:
  """Raises, naming every differing field, if `config` would feed the saved model other inputs,
  another architecture, or other images as this run's splits."""
  diffs = [f"model.{k}: run {run_config.model.get(k)!r}, given {config.model.get(k)!r}"
           for k in _MODEL_FIELDS
           if _plain(run_config.model.get(k)) != _plain(config.model.get(k))]
  diffs += [f"data.{k}: run {run_config.data.get(k)!r}, given {config.data.get(k)!r}"
            for k in _INPUT_FIELDS + _SPLIT_FIELDS
            if _data_value(run_config, k) != _data_value(config, k)]
  if diffs:
    raise ValueError("the given config does not match the trained run (" + "; ".join(diffs) +
                     "); pass the run's config (saved in the workdir) or the same overrides. To "
                     "score the model on other data, name it: --external=KIND:PATH")


def _data_value(config, key):
  value = config.data.get(key, _DATA_DEFAULTS.get(key))
  if key == "sources":  # as resolved: () and the default manifest spelled out are the same data
    from cxr_jax.data.build import source_specs

    return tuple(source_specs(value or ()))
  return _plain(value)


def _plain(value):
  return tuple(value) if isinstance(value, list | tuple) else value


def load_split(workdir, split: str, config=None, which: str = "best") -> LoadedSplit:
  """Loads the saved model and the split's example ids (dataset built or reused)."""
  from cxr_jax import data

  trained = checkpoint.load_trained(workdir, which=which)
  if config is None:
    config = trained.config
  else:
    check_compatible(trained.config, config)
  if config.data.get("task", "classes") != "classes":
    raise ValueError(f"{workdir} is a data.task={config.data.task!r} run (stage 1 of twice "
                     "transfer); the trainer wrote its per-finding AUCs to metrics.json. "
                     "--mode=evaluate/explain and predict serve the 3-class task")
  built = data.build_dataset(config.data)
  splits = data.make_splits(built.metadata, config.data)
  if split not in splits:
    raise ValueError(f"unknown split {split!r}; known: {sorted(splits)}")
  # A balanced training split may repeat ids; each image is evaluated once.
  return LoadedSplit(trained, config, built, np.unique(np.asarray(splits[split])))


def eval_setting(config, key: str, default):
  """config.eval.<key> when the config has it, else `default`."""
  section = config.get("eval") if hasattr(config, "get") else None
  return section.get(key, default) if section is not None else default


def write_predictions(path: Path, ids, labels, probs, metadata, class_names=LABELS) -> None:
  """One CSV row per image: id, file, source, patient_group, label, prediction, probabilities."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "file", "source", "patient_group", "label", "prediction",
                     *[f"p_{n}" for n in class_names]])
    for i, y, p in zip(ids, labels, probs, strict=True):
      writer.writerow([int(i), metadata["file"][i], metadata["source"][i],
                       metadata["patient_group"][i], class_names[y],
                       class_names[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])


def evaluate_workdir(workdir, split: str = "test", config=None, *, which: str = "best",
                     out_dir=None) -> dict:
  """Recomputes the evaluation of a trained workdir from its checkpoint.

  Writes into `out_dir` (default: the workdir for the test split, `<workdir>/eval_<split>`
  otherwise): metrics.json, roc.png, pr.png, confusion_matrix.png, reliability.png, report.md
  and predictions.csv. Returns the metrics dict (plus "written": the files). With
  eval.temperature_scaling, metrics["calibration"] also holds the temperature fitted on the run's
  validation split and ECE / NLL of this split before and after it (`add_calibration`).
  """
  return evaluate_split(load_split(workdir, split, config, which), split, workdir, which=which,
                        out_dir=out_dir)


def evaluate_split(loaded: LoadedSplit, split: str, workdir, *, which: str = "best",
                   out_dir=None) -> dict:
  """The evaluation of `evaluate_workdir` from a model and examples already in hand: the trainer
  passes the dataset and splits it holds, `--mode=evaluate` those `load_split` rebuilt from the
  workdir; both end here, so both write the same files."""
  config, trained, built = loaded.config, loaded.trained, loaded.built
  predict_fn = make_predict_fn(trained.model)  # one compilation for the split and validation
  batches = data_batches(loaded, batch_size=int(config.train.eval_batch_size))
  probs, labels, ids = predict_arrays(trained.model, trained.variables, batches,
                                      predict_fn=predict_fn)
  meta = built.metadata
  if not np.array_equal(meta["id"][ids], ids):
    raise RuntimeError("dataset metadata is not indexed by example id")
  metrics = score(config, labels, probs, meta, ids)
  if eval_setting(config, "temperature_scaling", True):
    # Evaluating the validation split itself: its predictions are the fit's, no second pass.
    fit = validation_fit(trained, config, built, (probs, labels) if split == "val" else None,
                         predict_fn=predict_fn)
    add_calibration(metrics, fit, labels, probs)
  metrics["run"] = dict(workdir=str(workdir), split=split, checkpoint=which,
                        dataset=built.version, preprocessing=trained.preprocessing)
  metrics["data_splits"] = data_splits(config, built)
  out = Path(out_dir) if out_dir else Path(workdir) / ("" if split == "test" else f"eval_{split}")
  title = f"Evaluation of {Path(workdir).name} on the {split} split ({which} checkpoint)"
  write_evaluation(out, metrics, title, ids, labels, probs, meta)
  logging.info("evaluation of %s (%s): accuracy %.4f; wrote %s", workdir, split,
               metrics["accuracy"], out)
  return metrics


def data_splits(config, built) -> dict:
  """What the run's splits hold: images per (source, label) cell of each split, and the cells some
  split lacks (a reader of any figure sees which collections and labels it rests on)."""
  from cxr_jax import data

  splits = data.make_splits(built.metadata, config.data)
  return dict(stratify=str(config.data.get("stratify", "label")),
              cells={name: data.cell_table(built.metadata, np.unique(ids))
                     for name, ids in splits.items()},
              missing_cells=data.missing_cells(built.metadata, splits))


def score(config, labels, probs, meta, ids) -> dict:
  """compute_metrics of one prediction set with the config's evaluation settings, bootstrapped
  over the examples' patient groups and broken down by their sources."""
  return compute_metrics(
      labels, probs, groups=meta["patient_group"][ids], sources=meta["source"][ids],
      num_bootstrap=int(eval_setting(config, "num_bootstrap", 1000)),
      ci=float(eval_setting(config, "ci", 0.95)), seed=int(config.seed))


def validation_split(trained, config, built) -> LoadedSplit:
  """The run's validation split (empty when data.num_folds <= 1) of an already built dataset."""
  from cxr_jax import data

  return LoadedSplit(trained, config, built,
                     np.unique(np.asarray(data.make_splits(built.metadata, config.data)["val"])))


def model_digest(variables) -> str:
  """Short sha256 of the variables' shapes and bytes: which parameters a temperature belongs to."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def validation_fit(trained, config, built, val_predictions=None, *, predict_fn=None) -> dict:
  """The temperature of a trained run fitted on its validation split of `built`: {temperature,
  n_val, model_digest}, with temperature None and "why" where none can be fitted.

  `val_predictions` (probs, labels) of the validation split when the caller has them already;
  otherwise they are predicted like any evaluated split (`data_batches`, `predict_arrays`, with
  `predict_fn` when given).
  """
  digest = model_digest(trained.variables)
  if val_predictions is None:
    val = validation_split(trained, config, built)
    if not len(val.ids):  # data.num_folds <= 1
      return dict(temperature=None, n_val=0, model_digest=digest,
                  why="not fitted: no validation split")
    val_predictions = _predict_split(val, predict_fn)
  return dict(temperature_fit(*val_predictions), model_digest=digest)


def _predict_split(loaded: LoadedSplit, predict_fn=None) -> tuple[np.ndarray, np.ndarray]:
  batches = data_batches(loaded, batch_size=int(loaded.config.train.eval_batch_size))
  probs, labels, _ = predict_arrays(loaded.trained.model, loaded.trained.variables, batches,
                                    predict_fn=predict_fn)
  return probs, labels


def temperature_fit(probs, labels) -> dict:
  """{temperature, n_val} fitted on validation probabilities; temperature None and "why" where
  `calibration.fit_problem` names a reason."""
  logits = calibration.logits_from_probs(probs)
  problem = calibration.fit_problem(logits, labels)
  if problem:
    return dict(temperature=None, n_val=int(len(labels)), why=f"not fitted: {problem}")
  return dict(temperature=calibration.fit_temperature(logits, labels), n_val=int(len(labels)))


def saved_validation_fit(workdir, digest: str) -> dict | None:
  """The validation fit recorded by the test evaluation in `workdir`/metrics.json, if it was made
  for the same parameters (`model_digest`); None otherwise (absent, older or another model)."""
  path = Path(workdir) / checkpoint.METRICS_FILE
  if not path.is_file():
    return None
  cal = json.loads(path.read_text()).get("calibration") or {}
  if cal.get("model_digest") != digest or "temperature" not in cal:
    return None
  return {k: cal[k] for k in ("temperature", "n_val", "model_digest", "why") if k in cal}


def add_calibration(metrics: dict, fit: dict, labels, probs) -> None:
  """Adds the validation fit to metrics["calibration"] and, when a temperature was fitted, ECE
  and NLL of the evaluated examples before and after it (same bins as the reliability curve, so
  ece_before is its ECE). The reported probabilities stay the model's own."""
  cal = metrics["calibration"]
  cal.update(fit)
  if fit["temperature"] is not None:
    cal.update(calibration.calibration_summary(
        calibration.logits_from_probs(probs), labels, fit["temperature"],
        num_bins=len(cal["bins"])))


def write_evaluation(out: Path, metrics: dict, title: str, ids, labels, probs, meta) -> None:
  """metrics.json, report.md, predictions.csv and the plots into `out`; sets metrics["written"].
  Every process computes the same numbers; process 0 writes them."""
  written = []
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(metrics, out)
    files.write_json(out / checkpoint.METRICS_FILE, metrics)
    files.write_atomic(out / "report.md", render_report(metrics, plots, title=title))
    write_predictions(out / "predictions.csv", ids, labels, probs, meta)
    written = [checkpoint.METRICS_FILE, "report.md", "predictions.csv", *plots.values()]
  metrics["written"] = [str(out / f) for f in written]


def data_batches(loaded: LoadedSplit, batch_size: int, ids=None):
  """Evaluation batches (id order, padded, one device) of the split or of the given ids."""
  from cxr_jax import data

  return data.make_dataset(
      loaded.built, loaded.ids if ids is None else ids, batch_size=batch_size, num_devices=1,
      preprocessing=loaded.trained.preprocessing, train=False, seed=int(loaded.config.seed),
      epoch=0, data_config=loaded.config.data)
