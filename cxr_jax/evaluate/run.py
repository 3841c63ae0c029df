"""A trained run loaded once for all its evaluations (`LoadedRun`), and what they predict, cached.

big_vision's evaluators receive the predict functions its trainer built once; here they receive a
`LoadedRun`: the kept checkpoint (read once, `checkpoint.load_trained`), its data config, dataset
and splits (built on first use), the predict / feature / Grad-CAM functions (built once, jitted
once per batch shape) and the outputs per split, cached: two evaluators of the same split predict
it once. The trainer makes one from the dataset and splits it holds (`LoadedRun(...)`), every
other caller from the workdir (`LoadedRun.from_workdir`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np

from cxr_jax import checkpoint
from cxr_jax.checkpoint import model_digest
from cxr_jax.data.preprocess import PreprocessConfig
from cxr_jax.data.records import NO_LABEL
from cxr_jax.evaluate import calibration, inference

# The ids "split" of every labelled image of the run's data (all splits): the source probe's.
LABELLED = "labelled"

# Fields that change what the saved parameters compute, or which images are this run's test split;
# a config given at evaluation time must agree with the run's config on every one. Other data is
# evaluated explicitly (cxr_jax.evaluate.external), never as a side effect of a changed config.
_MODEL_FIELDS = ("arch", "num_classes", "head", "hidden")
# The preprocessing's fields (data.preprocess.PreprocessConfig) that are config.data fields; "lungs"
# is the segmenter's version, derived from them.
_INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(PreprocessConfig) if f.name != "lungs")
# What a saved config from before a field existed ran with.
_DATA_DEFAULTS = dict(task="classes", **{
    f.name: f.default for f in dataclasses.fields(PreprocessConfig)
    if f.name in _INPUT_FIELDS and f.default is not dataclasses.MISSING})
_SPLIT_FIELDS = ("sources", "task", "split_seed", "test_fraction", "num_folds", "fold",
                 "train_fraction")


def eval_setting(config, key: str, default):
  """config.eval.<key> when the config has it, else `default`."""
  section = config.get("eval") if hasattr(config, "get") else None
  return section.get(key, default) if section is not None else default


@dataclasses.dataclass
class LoadedSplit:
  """A trained model with the examples of one split of its data."""
  trained: checkpoint.Trained
  config: object           # the config used for data and evaluation settings
  built: object            # cxr_jax.data.BuiltDataset
  ids: np.ndarray          # example ids of the split


@dataclasses.dataclass
class Predictions:
  """Class probabilities [N, C] float32, labels [N] and example ids [N] of one split, id order."""
  probs: np.ndarray
  labels: np.ndarray
  ids: np.ndarray


class LoadedRun:
  """A trained run with its data: `trained` (checkpoint.Trained), `config` (data and evaluation
  settings), `built` and `splits` (built on first use unless given), the inference variables and
  functions, and the predictions / features / outputs per split (`predictions`, `features`,
  `outputs`: logits and every block's pooled features in one pass, the out-of-distribution
  scores' input; `outputs_at`: the blocks' over the same images preprocessed at another size)."""

  def __init__(self, workdir, trained: checkpoint.Trained, config=None, *, which: str = "best",
               built=None, splits: dict | None = None, segmenter=None):
    self.workdir, self.trained, self.which = Path(workdir), trained, which
    self.config = trained.config if config is None else config
    self.model = trained.model
    self.variables = inference.compute_variables(trained.model,
                                                 inference.inference_variables(trained.variables))
    self.predict_fn = inference.make_predict_fn(trained.model)
    self._built, self._splits, self._segmenter = built, splits, segmenter
    self._cache: dict = {}

  @classmethod
  def from_workdir(cls, workdir, config=None, *, which: str = "best", segmenter=None):
    """Reads the kept checkpoint (the one read of an evaluation); `config`, when given, must
    agree with the run's on what the parameters compute and which images its splits are
    (`workdir.check_compatible`)."""
    trained = checkpoint.load_trained(workdir, which=which)
    if config is not None:
      check_compatible(trained.config, config)
    return cls(workdir, trained, config, which=which, segmenter=segmenter)

  def check_classes(self, what: str) -> None:
    """Raises when the run is not a 3-class run (stage 1 of twice transfer)."""
    task = self.config.data.get("task", "classes")
    if task != "classes":
      raise ValueError(f"{self.workdir} is a data.task={task!r} run (stage 1 of twice "
                       f"transfer); the trainer wrote its per-finding AUCs to metrics.json. {what} "
                       "serves the 3-class task")

  @property
  def built(self):
    """The run's dataset (cxr_jax.data.BuiltDataset), built or reused on first use."""
    if self._built is None:
      from cxr_jax import data

      self._built = data.build_dataset(self.config.data)
    return self._built

  @property
  def splits(self) -> dict:
    """Split name -> example ids; the findings task's splits for its runs (stage 1 of twice
    transfer: no patient group of the COVID task's test split)."""
    if self._splits is None:
      from cxr_jax import data

      meta = self.built.metadata
      if self.config.data.get("task", "classes") == "findings":
        self._splits = data.make_findings_splits(
            meta, self.config.data, exclude_groups=data.test_groups(meta, self.config.data))
      else:
        self._splits = data.make_splits(meta, self.config.data)
    return self._splits

  @property
  def batch_size(self) -> int:
    return int(self.config.train.eval_batch_size)

  def split(self, name: str):
    """The split's examples as a `workdir.LoadedSplit`; LABELLED: every labelled image."""
    if name == LABELLED:
      meta = self.built.metadata
      ids = meta["id"][meta["label"] != NO_LABEL]
    elif name in self.splits:
      # A balanced training split may repeat ids; each image is evaluated once.
      ids = np.unique(np.asarray(self.splits[name]))
    else:
      raise ValueError(f"unknown split {name!r}; known: {sorted(self.splits)}")
    return LoadedSplit(self.trained, self.config, self.built, ids)

  def cached(self, key, compute):
    """compute()'s result under `key`, computed once per run (what the evaluations share)."""
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  def predictions(self, name: str, loaded=None) -> Predictions:
    """The kept model's class probabilities over split `name` (or over `loaded`, a LoadedSplit
    of other data, cached under `name`), predicted once per run. Where the evaluation also scores
    out-of-distribution (config.eval.ood), they are `outputs`' probabilities: one forward pass
    per split gives both (the same function of the same images; a test checks them equal)."""
    return self.cached(("probs", name), lambda: self._predict(loaded or self.split(name), name))

  def _predict(self, loaded, name) -> Predictions:
    if eval_setting(self.config, "ood", True):
      out, labels, ids = self.outputs(name, loaded)
      probs = out["probs"]
    else:
      probs, labels, ids = self._over(loaded, lambda x: self.predict_fn(self.variables, x))
    if not np.array_equal(loaded.built.metadata["id"][ids], ids):
      raise RuntimeError("dataset metadata is not indexed by example id")
    return Predictions(probs.astype(np.float32), labels, ids)

  @functools.cached_property
  def logits_fn(self):
    """jitted fn(variables, images) -> the model's outputs (`inference.logits`)."""
    return jax.jit(functools.partial(inference.logits, self.model))

  def logits(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(outputs [N, K], ids [N]) of split `name` (before softmax or sigmoid), once per run."""
    def compute():
      out, _, ids = self._over(self.split(name), lambda x: self.logits_fn(self.variables, x))
      return out, ids
    return self.cached(("logits", name), compute)

  def _over(self, loaded, fn):
    """fn(images)'s outputs over the evaluation batches of `loaded`: (outputs, labels, ids)."""
    return inference.run_batches(fn, data_batches(loaded, self.batch_size))

  @functools.cached_property
  def outputs_fn(self):
    """fn(variables, images) -> {probs, logits, features, blocks} in one forward pass
    (`inference.make_outputs_fn`): what the out-of-distribution scores read."""
    return inference.make_outputs_fn(self.model)

  def outputs(self, name, loaded=None) -> tuple[dict, np.ndarray, np.ndarray]:
    """(outputs_fn's {probs, logits, features, blocks} [N, ...], labels [N], ids [N]) of split
    `name` (or of `loaded`, other data, cached under `name`), once per run."""
    return self.cached(("outputs", name), lambda: self._over(
        loaded or self.split(name), lambda x: self.outputs_fn(self.variables, x)))

  @functools.cached_property
  def blocks_fn(self):
    """fn(variables, images) -> `outputs_fn`'s {features, blocks, input} without the head: what
    the out-of-distribution scores read of images of any size (`outputs_at`)."""
    return inference.make_outputs_fn(self.model, head=False)

  def outputs_at(self, loaded, ids, size: int) -> dict:
    """blocks_fn's outputs over the images `ids` of `loaded` preprocessed at `size` px: the same
    sources built with only data.image_size changed (cached and versioned like any build), rows
    matched by file and returned in the order of `ids`."""
    from cxr_jax import data

    config = copy.deepcopy(loaded.config)
    with config.unlocked():
      config.data.image_size = size
    built = data.build_dataset(config.data, every_class=False)
    row_of = dict(zip(built.metadata["file"].tolist(), built.metadata["id"].tolist(), strict=True))
    files = loaded.built.metadata["file"][ids].tolist()
    missing = [f for f in files if f not in row_of]
    if missing:
      raise RuntimeError(f"{len(missing)} of {len(files)} images are missing from the build at "
                         f"{size} px ({built.version}; e.g. {missing[0]}): a "
                         "file changed or became unreadable since the run's build; rebuild both")
    at = np.array([row_of[f] for f in files], np.int64)
    out, _, got = self._over(LoadedSplit(self.trained, config, built, at),
                             lambda x: self.blocks_fn(self.variables, x))
    position = {i: k for k, i in enumerate(got.tolist())}
    order = np.array([position[i] for i in at.tolist()], np.int64)
    return jax.tree.map(lambda v: v[order], out)

  @functools.cached_property
  def feature_fn(self):
    """fn(variables, images) -> pooled last-block features [N, C] (`inference.make_feature_fn`)."""
    return inference.make_feature_fn(self.model)

  def features(self, name: str, variables=None, key: str = "kept_model"):
    """(features [N, C], ids [N]) of split `name` under `variables` (default the kept model's;
    `key` names other variables in the cache)."""
    def compute():
      params = self.variables if variables is None else variables
      feats, _, ids = self._over(self.split(name), lambda x: self.feature_fn(params, x))
      return feats, ids
    return self.cached(("features", name, key), compute)

  def cam_fn(self, layer: str, method: str = "gradcam"):
    """The jitted Grad-CAM function of `explain.gradcam.make_cam_fn`, built once per layer."""
    from cxr_jax.explain.gradcam import make_cam_fn

    return self.cached(("cam", layer, method), lambda: make_cam_fn(self.model, layer, method))

  def validation_fit(self) -> dict:
    """The temperature fitted on the run's validation split (`temperature_fit`), once."""
    def compute():
      digest = model_digest(self.trained.variables)
      if not len(self.splits.get("val", ())):   # data.num_folds <= 1
        return dict(temperature=None, n_val=0, model_digest=digest,
                    why="not fitted: no validation split")
      val = self.predictions("val")
      return dict(temperature_fit(val.probs, val.labels), model_digest=digest)
    return self.cached("validation_fit", compute)

  def recorded_validation_fit(self) -> dict:
    """The validation fit: the one the test evaluation recorded in metrics.json for these
    parameters, else `validation_fit` (no dataset is built when one was recorded)."""
    if "validation_fit" in self._cache:
      return self._cache["validation_fit"]
    saved = saved_validation_fit(self.workdir, model_digest(self.trained.variables))
    return saved if saved is not None else self.validation_fit()

  def segmenter(self):
    """The lung segmenter of the lung parts: the one given, else the stored one (trained first
    if missing; raises AnnotationError / WeightsError where it cannot be had)."""
    if self._segmenter is None:
      from cxr_jax.lungs import segment

      self._segmenter = segment.default_segmenter()
    return self._segmenter

  def test_lungs(self) -> dict:
    """The test split's lung masks (`segment_split`), segmented once per run."""
    return self.cached("test_lungs",
                        lambda: segment_split(self.split("test"), self.segmenter()))


def load_split(workdir, split: str, config=None, which: str = "best") -> LoadedSplit:
  """Loads the saved model and the split's example ids (dataset built or reused)."""
  run = LoadedRun.from_workdir(workdir, config, which=which)
  run.check_classes("--mode=evaluate/explain and predict")
  return run.split(split)


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


def data_batches(loaded: LoadedSplit, batch_size: int, ids=None):
  """Evaluation batches (id order, padded, one device) of the split or of the given ids."""
  from cxr_jax import data

  return data.make_dataset(
      loaded.built, loaded.ids if ids is None else ids, batch_size=batch_size, num_devices=1,
      preprocessing=loaded.trained.preprocessing, train=False, seed=int(loaded.config.seed),
      epoch=0, data_config=loaded.config.data)


def segment_split(loaded: LoadedSplit, seg) -> dict:
  """The predicted lung mask of every image of `loaded`, segmented once for every lung part of
  an evaluation: dict(segmenter, found {id: Found of a mask that passed its check}, qc_failed
  [dict(id, file, reason)]). Images whose mask failed are left out of every lung part, never
  given an empty mask."""
  from cxr_jax.explain.overlay import input_gray

  files_of = loaded.built.metadata["file"]
  found, failed = {}, []
  for batch in data_batches(loaded, int(loaded.config.train.eval_batch_size)):
    images, index, real = batch_rows(batch)
    gray = input_gray(images[real], loaded.trained.preprocessing)
    names = [str(files_of[i]) for i in index[real]]
    for i, name, f in zip(index[real], names, seg.lungs_many(list(gray), names=names), strict=True):
      if f.check.ok:
        found[int(i)] = f
      else:
        failed.append(dict(id=int(i), file=name, reason=f.check.reason))
  return dict(segmenter=seg.version, found=found, qc_failed=failed)


def batch_rows(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images [N, H, W, 3], ids [N], real [N] bool: False on padding) of an evaluation batch."""
  images = np.asarray(batch["image"]).reshape((-1,) + np.shape(batch["image"])[-3:])
  real = np.asarray(batch.get("mask", np.ones(len(images)))).reshape(-1) > 0
  return images, np.asarray(batch["index"]).reshape(-1), real
