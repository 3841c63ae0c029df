"""The training loop: `train_and_evaluate(config, workdir)` (flax examples' entry-point shape)."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions
from flax import jax_utils

from cxr_jax import checkpoint, data, evaluate, files, models, weights
from cxr_jax.evaluate.inference import compute_variables, run_batches
from cxr_jax.train import feature_cache, optim, overview, robust, transfer
from cxr_jax.train.step import (
  LOSSES,
  TrainState,
  accuracy,
  make_pmapped_steps,
  mixup,
  model_variables,
)


@dataclasses.dataclass
class Setup:
  """Everything a run derives from its config before the first step."""
  config: ml_collections.ConfigDict
  built: data.BuiltDataset
  split_ids: dict
  model: object
  plan: models.FineTuningPlan   # what trains (config.model.trainable_blocks)
  tx: object
  plateau: object
  state: TrainState
  preprocessing: str
  versions: dict
  class_weights: np.ndarray
  features: feature_cache.FeatureCache | None = None  # frozen-block outputs (train.feature_cache)
  targets: np.ndarray | None = None   # findings task: multi-hot targets per example id
  # Source-robust training: (source names, source index, (source, label) cell) per example id.
  groups: tuple | None = None


def init_variables(model, config, rng) -> tuple[dict, dict]:
  """Fresh (params, batch_stats); batch_stats is {} for models without BatchNorm."""
  size = config.data.image_size
  dummy = jnp.zeros((1, size, size, 3), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, dummy, train=False))(rng)
  return variables["params"], variables.get("batch_stats", {})


def initial_variables(params, batch_stats, config):
  """The starting point: another run's kept model (model.init_from), ImageNet weights, or the
  fresh init. Returns (params, batch_stats, preprocessing, weights version)."""
  model_config = config.model
  if model_config.get("init_from", ""):
    return transfer.transferred_variables(params, batch_stats, config)
  if model_config.pretrained == "none":
    return params, batch_stats, "torchvision", "random-init"
  if model_config.pretrained != "imagenet":
    raise ValueError(f"config.model.pretrained={model_config.pretrained!r}: use imagenet or none")
  pre = weights.load_pretrained(model_config.arch, source=model_config.weights_source or None)
  if batch_stats and pre.batch_stats:
    batch_stats = weights.merge_pretrained(batch_stats, pre.batch_stats)
  return (weights.merge_pretrained(params, pre.params), batch_stats, pre.preprocessing,
          pre.version)


def task_splits(metadata, config) -> tuple[dict, np.ndarray | None]:
  """(split ids, multi-hot targets or None). The findings task (stage 1 of twice transfer) trains
  on NIH findings and never sees a patient group of the COVID task's test split."""
  if transfer.task_of(config) == "classes":
    return data.make_splits(metadata, config.data), None
  if config.train.mixup_alpha > 0 or config.train.class_weighting:
    raise ValueError("config.data.task='findings' supports neither train.mixup_alpha nor "
                     "train.class_weighting (both are defined for one label per image)")
  num = len(transfer.class_names(config))
  if config.model.num_classes != num:
    raise ValueError(f"config.data.task='findings' has {num} outputs; set "
                     f"config.model.num_classes={num} (it is {config.model.num_classes})")
  # make_findings_splits asserts that no split holds an excluded (COVID test-split) group.
  splits = data.make_findings_splits(metadata, config.data,
                                     exclude_groups=data.test_groups(metadata, config.data))
  targets = np.zeros((len(metadata["id"]), num), np.float32)
  used = np.concatenate(list(splits.values()))
  targets[used] = data.multi_hot(np.asarray(metadata["findings"])[used])
  return splits, targets


def class_weights_for(labels: np.ndarray, num_classes: int, enabled: bool) -> np.ndarray:
  if not enabled:
    return np.ones(num_classes, np.float32)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def build_dataset(data_config):
  """Builds (or reuses) the dataset; with several processes, process 0 builds it first."""
  if jax.process_count() == 1:
    return data.build_dataset(data_config)
  from jax.experimental import multihost_utils

  built = data.build_dataset(data_config) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("cxr_jax: dataset built")
  return built or data.build_dataset(data_config)


def setup(config: ml_collections.ConfigDict) -> Setup:
  built = build_dataset(config.data)
  split_ids, targets = task_splits(built.metadata, config)
  model = models.create_model(config.model)
  plan = models.fine_tuning_plan(config.model)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params, batch_stats, preprocessing, weights_version = initial_variables(
      *init_variables(model, config, init_rng), config)
  groups, params, robust_state = robust_setup(config, built, split_ids, model, plan, params,
                                              batch_stats, jax.random.fold_in(init_rng, 1))
  tx = optim.make_optimizer(params, plan, config.train,
                            run_length(len(split_ids["train"]), config.train)[1])
  plateau = optim.make_plateau(config.train)
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
                     plateau_state=plateau.init({}), rng=state_rng, batch_stats=batch_stats,
                     robust=robust_state)
  train_labels = built.metadata["label"][split_ids["train"]]
  versions = {
      "dataset": built.version, "weights": weights_version, "preprocessing": preprocessing,
      "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
      "devices": [str(d) for d in jax.devices()],
      "split_sizes": {k: int(len(v)) for k, v in split_ids.items()},
  }
  return Setup(
      config=config, built=built, split_ids=split_ids, model=model, plan=plan, tx=tx,
      plateau=plateau, state=state, preprocessing=preprocessing, versions=versions,
      class_weights=class_weights_for(train_labels, config.model.num_classes,
                                      config.train.class_weighting),
      features=feature_cache.for_setup(config, plan, model, params, built, split_ids,
                                       preprocessing),
      targets=targets, groups=groups)


def robust_setup(config, built, split_ids, model, plan, params, batch_stats, rng):
  """(groups, params, robust state) for group DRO / DANN (config.train.group_dro_step,
  dann_weight): the group table, params with the source classifier added under
  robust.SOURCE_HEAD, and the initial group weights. (None, params, {}) when both are off."""
  opts = robust.Options.from_config(config.train, 1)
  if not (opts.dro or opts.dann):
    return None, params, {}
  if transfer.task_of(config) != "classes":
    raise ValueError("config.train.group_dro_step / dann_weight need config.data.task='classes'")
  names, sources, cells = robust.group_table(built.metadata, config.model.num_classes)
  state = {}
  if opts.dro:
    num_groups = len(names) * config.model.num_classes
    state["group_weights"] = jnp.asarray(
        robust.initial_group_weights(cells[split_ids["train"]], num_groups))
  if opts.dann:
    size = config.data.image_size
    shape = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, 3)),
                                                 stop=plan.block_names[-1]),
                           model_variables(params, batch_stats)).shape
    params = {**params, robust.SOURCE_HEAD: robust.init_source_head(
        rng, len(names), shape[-1], int(config.train.dann_hidden))}
  return (names, sources, cells), params, state


def _local_shard(batch: dict) -> dict:
  """This process's rows of a batch laid out as [global devices, per-device batch, ...]."""
  if jax.process_count() == 1:
    return batch
  n = jax.local_device_count()
  start = jax.process_index() * n
  return {k: v[start:start + n] for k, v in batch.items()}


def train_batches(s: Setup, epoch: int):
  batches = data.make_dataset(
      s.built, s.split_ids["train"], batch_size=s.config.train.batch_size,
      num_devices=jax.device_count(), preprocessing=s.preprocessing, train=True,
      seed=s.config.seed, epoch=epoch, data_config=s.config.data)
  return s.features.swap(batches) if s.features else batches


def run_length(num_train: int, train_config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(steps per epoch, steps in the whole run) for a training split of `num_train` images."""
  full = num_train // train_config.batch_size
  if full == 0:
    raise ValueError(
        f"the training split has {num_train} images, fewer than one batch of "
        f"config.train.batch_size={train_config.batch_size}")
  cap = train_config.steps_per_epoch
  per_epoch = min(full, cap) if cap > 0 else full
  total = per_epoch * train_config.num_epochs
  return per_epoch, min(total, train_config.max_steps) if train_config.max_steps > 0 else total


def check_same_length(loop: dict, total: int, train_config, workdir) -> None:
  """Refuses to resume a run whose schedule depends on its length (cosine learning rate, DANN's
  weight) with another length: its first steps followed the old schedule, its next ones would
  follow a re-stretched one, and the result would be neither run. A constant rate can continue."""
  before = loop.get("total_steps")   # absent in checkpoints written before it was recorded
  by_length = [name for name, on in (("config.train.lr_schedule='cosine'",
                                      train_config.lr_schedule == "cosine"),
                                     ("config.train.dann_weight", train_config.get("dann_weight", 0)))
               if on]
  if before is not None and before != total and by_length:
    raise ValueError(
        f"{workdir} was trained on a schedule over {before} steps ({', '.join(by_length)} depends on "
        f"the run's length); this config makes the run {total} steps long. Resume with the "
        f"num_epochs / steps_per_epoch / max_steps it had, or train the longer run in a new workdir")


def predict_split(s: Setup, p_eval, variables, split: str):
  """Logits, labels and ids of every example of a split, padding removed, in split order."""
  batches = data.make_dataset(
      s.built, s.split_ids[split], batch_size=s.config.train.eval_batch_size,
      num_devices=jax.local_device_count(), preprocessing=s.preprocessing, train=False,
      seed=s.config.seed, epoch=0, data_config=s.config.data)
  variables = compute_variables(s.model, variables)  # rounded once for the pass, not per batch
  return run_batches(lambda images: p_eval(variables, {"image": images}),
                     s.features.swap(batches) if s.features else batches, per_device=True)


def loss_kind(s: Setup) -> str:
  """The training loss of step.LOSSES: sigmoid for the multi-label findings task, else softmax."""
  return "sigmoid" if s.targets is not None else "softmax"


def validation_metrics(s: Setup, p_eval, variables) -> dict:
  """Loss and accuracy over the validation split with the training step's formulas, unweighted."""
  logits, labels, ids = predict_split(s, p_eval, variables, "val")
  targets = (s.targets[ids] if s.targets is not None
             else np.eye(s.config.model.num_classes, dtype=np.float32)[labels])
  logits, kind = jnp.asarray(logits), loss_kind(s)
  return {"val_loss": float(LOSSES[kind](logits, targets, jnp.ones(len(ids)))),
          "val_accuracy": float(accuracy(logits, targets, kind))}


def _prepare_batch(s: Setup, batch: dict, epoch: int, step: int) -> dict:
  out = {"image": batch["image"], "label": batch["label"],
         "weight": s.class_weights[batch["label"]]}
  if s.targets is not None:
    out["targets"] = s.targets[batch["index"]]
    out["weight"] = np.ones(batch["label"].shape, np.float32)
  if s.groups is not None:
    out["source"], out["group"] = s.groups[1][batch["index"]], s.groups[2][batch["index"]]
  batch = out
  if s.config.train.mixup_alpha > 0:
    rng = np.random.default_rng([s.config.seed, epoch, step])
    batch = mixup(batch, s.config.train.mixup_alpha, s.config.model.num_classes, rng)
  return _local_shard(batch)


class NonFiniteLoss(FloatingPointError):
  pass


def _finished(loop: dict, config: ml_collections.ConfigDict, step: int) -> bool:
  """Judged against the current config, so a finished run restarted with more epochs goes on."""
  max_steps = config.train.max_steps
  return bool(loop.get("stopped_early") or loop["epoch"] >= config.train.num_epochs
              or (max_steps > 0 and step >= max_steps))


def train(s: Setup, workdir: Path) -> tuple[dict, TrainState]:
  """Trains with resume; returns the loop state (epochs run, best epoch, history) and the state."""
  config = s.config
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  ckpt = checkpoint.Checkpoints(workdir)
  restored = ckpt.restore_latest(s.state)
  state, loop = s.state, {"epoch": 0, "early_stopping": None, "history": [], "finished": False,
                          "stopped_early": False}
  n_steps, total = run_length(len(s.split_ids["train"]), config.train)
  if restored is not None:
    state, loop = restored
    check_same_length(loop, total, config.train, workdir)
    logging.info("Resuming from %s at epoch %d (step %d)", workdir, loop["epoch"], int(state.step))
  else:
    overview.log_overview(state.params, s.plan)
  stopper = (optim.EarlyStopping.from_dict(loop["early_stopping"]) if loop["early_stopping"]
             else optim.EarlyStopping(config.train.early_stopping_patience))
  if _finished(loop, config, int(state.step)):   # e.g. restarted after completion
    ckpt.close()
    return loop, state

  model = s.features.suffix(s.model) if s.features else s.model
  max_steps = config.train.max_steps if config.train.max_steps > 0 else None
  learning_rate = optim.learning_rate(config.train, total)
  p_train, p_eval = make_pmapped_steps(
      model, s.tx, config.model.num_classes, loss=loss_kind(s),
      frozen=s.plan.frozen,
      robust_opts=robust.Options.from_config(config.train, total, s.plan.block_names[-1]))
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  r_state = jax_utils.replicate(state)
  step = int(state.step)
  for epoch in range(loop["epoch"], config.train.num_epochs):
    train_metrics = []
    for i, batch in enumerate(train_batches(s, epoch)):
      if i >= n_steps or (max_steps and step >= max_steps):
        break
      r_state, metrics = p_train(r_state, _prepare_batch(s, batch, epoch, step))
      step += 1
      metrics = jax.tree.map(lambda x: float(x[0]), metrics)
      if not np.isfinite(metrics["loss"]):
        ckpt.close()
        raise NonFiniteLoss(
            f"loss is {metrics['loss']} at step {step} (epoch {epoch}); the last good checkpoint "
            f"(end of epoch {loop['epoch'] - 1}) is kept in {workdir}/checkpoints. Lower "
            f"config.train.learning_rate or check the input data.")
      train_metrics.append(metrics)
      progress(step)
      if step % config.train.log_every_steps == 0:
        writer.write_scalars(step, {f"train_{k}": v for k, v in metrics.items()})

    val = validation_metrics(s, p_eval, model_variables(robust.without_source_head(r_state.params),
                                                        r_state.batch_stats))
    plateau_state = optim.plateau_step(s.plateau, jax_utils.unreplicate(r_state.plateau_state),
                                       val["val_loss"])
    r_state = r_state.replace(plateau_state=jax_utils.replicate(plateau_state))
    # numpy on the host: orbax cannot save pmap's host-local arrays when there are several processes.
    state = jax.device_get(jax_utils.unreplicate(r_state))
    improved, stop = stopper.update(epoch, val["val_loss"])
    epoch_metrics = {"epoch": epoch, "step": step, **val,
                     "train_loss": float(np.mean([m["loss"] for m in train_metrics] or [np.nan])),
                     "lr": (float(learning_rate(step)) if callable(learning_rate) else learning_rate)
                           * float(state.plateau_state.scale)}
    writer.write_scalars(step, {k: v for k, v in epoch_metrics.items() if k != "epoch"})
    logging.info("epoch %d: %s", epoch, json.dumps(epoch_metrics))
    if improved:
      ckpt.save_best(epoch, model_variables(robust.without_source_head(state.params),
                                            state.batch_stats), {"epoch": epoch, **val})
    loop = {"epoch": epoch + 1, "early_stopping": stopper.to_dict(),
            "history": loop["history"] + [epoch_metrics],
            "stopped_early": stop, "total_steps": total}
    loop["finished"] = _finished(loop, config, step)
    ckpt.save_latest(epoch, state, loop)
    if loop["finished"]:
      break
  writer.flush()
  ckpt.close()
  return loop, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (or resumes) in `workdir`, then evaluates the kept parameters on the test split."""
  workdir = Path(workdir)
  s = setup(config)
  checkpoint.write_run_info(workdir, config, s.versions)
  loop, _ = train(s, workdir)
  if jax.process_index() != 0:   # evaluation writes files: one process is enough
    return {}
  files.write_json(workdir / checkpoint.HISTORY_FILE, loop["history"], indent=2)
  return evaluate_kept(s, workdir)


def evaluate_kept(s: Setup, workdir: Path) -> dict:
  """The evaluators of config.eval.evaluators on the best-validation-loss parameters, the test
  split first, always (its metrics.json marks the run finished; a findings-task run gets its
  per-finding AUCs alone); returns the test split's metrics, with the external sets' headlines
  under "external"."""
  # The kept parameters are the best epoch's checkpoint (the state in hand is the last epoch's);
  # the dataset and splits are the ones this run trained on.
  run = evaluate.LoadedRun(workdir, checkpoint.load_trained(workdir), s.config, built=s.built,
                           splits=s.split_ids)
  names = ("test", *(n for n in s.config.eval.get("evaluators", ()) if n != "test"))
  if s.targets is not None:   # stage 1 of twice transfer: no 3-class evaluation applies
    names = ("findings",)
  evaluators = evaluate.from_config(s.config, names)
  results = evaluate.run_evaluators(run, evaluators, workdir, redo=True)
  metrics = results[evaluators[0].key]
  external = {Path(ev.name).name: results[ev.key]["headline"] for ev in evaluators
              if isinstance(ev, evaluate.External)}
  if external:
    metrics["external"] = external
  return metrics
