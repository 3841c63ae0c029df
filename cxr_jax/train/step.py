"""Pure, pmapped train and eval steps. Everything random is a function of (seed, step)."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxr_jax.evaluate import inference
from cxr_jax.train import robust

AXIS = "batch"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau_state: Any      # optax reduce_on_plateau state; .scale multiplies the learning rate
  rng: jax.Array          # base key; per-step keys are fold_in(rng, step)
  # BatchNorm running statistics (DenseNet); {} for models without any (VGG).
  batch_stats: Any = flax.struct.field(default_factory=dict)
  # Group DRO's weights {"group_weights": [groups]} (cxr_jax.train.robust); {} when it is off, so
  # runs without it keep the state (and checkpoints) they had.
  robust: Any = flax.struct.field(default_factory=dict)


def model_variables(params, batch_stats) -> dict:
  """The variables `model.apply` takes: params, plus batch_stats where the model has them."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def cross_entropy(logits, targets, weights):
  """Keras-style class-weighted loss: the batch mean of weight * cross-entropy.

  Normalising by the example count (not the weight sum) keeps the mean over devices equal to the
  mean over the global batch, whatever the number of devices.
  """
  return jnp.mean(optax.softmax_cross_entropy(logits, targets) * weights)


def sigmoid_cross_entropy(logits, targets, weights):
  """Multi-label loss (NIH findings): per-example mean over outputs, then as `cross_entropy`."""
  return jnp.mean(jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), -1) * weights)


LOSSES = {"softmax": cross_entropy, "sigmoid": sigmoid_cross_entropy}


def accuracy(logits, targets, loss: str):
  if loss == "sigmoid":   # share of outputs on the right side of 0.5
    return jnp.mean((logits > 0) == (targets > 0.5))
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))


def _keep_frozen(old, new, frozen):
  """`new` batch_stats, except the `frozen` stages', which stay bitwise as they were."""
  return {name: old[name] if name in frozen else sub for name, sub in new.items()}


def _robust_loss(params, logits, targets, inter, state, batch, opts: robust.Options):
  """(loss to differentiate, new robust state, metrics) of group DRO and/or DANN."""
  metrics, new_robust = {}, state.robust
  if opts.dro:
    per_example = optax.softmax_cross_entropy(logits, targets) * batch["weight"]
    value, weights, metrics["dro_loss"] = robust.dro_loss(
        per_example, batch["group"], state.robust["group_weights"],
        step_size=opts.group_dro_step, axis_name=AXIS)
    new_robust = {"group_weights": weights}
  else:
    value = cross_entropy(logits, targets, batch["weight"])
  if opts.dann:
    scale = robust.dann_scale(state.step, opts.total_steps, opts.dann_weight)
    added, src_loss, metrics["source_accuracy"] = robust.source_loss(
        params[robust.SOURCE_HEAD], robust.captured_features(inter, opts.last_block),
        batch["source"], scale, opts.dann_hidden, opts.dann_loss)
    value = value + added
    metrics["source_loss"], metrics["dann_scale"] = src_loss, scale
  return value, new_robust, metrics


def _device_mean(tree):
  """The mean over the devices of the pmapped axis; on one device the tree itself (the same
  values: XLA:CPU copies every array through a one-device all-reduce, 2 % of a bfloat16 step)."""
  return tree if jax.lax.psum(1, AXIS) == 1 else jax.lax.pmean(tree, AXIS)


def train_step(state: TrainState, batch, *, model, tx, num_classes, loss="softmax", frozen=(),
               robust_opts: robust.Options = robust.OFF):
  """One step on one device's shard; gradients, batch statistics and metrics are averaged over
  AXIS. `batch["targets"]` (mixup, multi-label) replaces one-hot labels when present. `frozen`:
  the frozen blocks, `FineTuningPlan.frozen` (their gradients are zero, their statistics fixed).
  `robust_opts`: group DRO (needs batch["group"]) and DANN (needs batch["source"])."""
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
  targets = batch.get("targets")
  if targets is None:
    targets = jax.nn.one_hot(batch["label"], num_classes)
  has_stats = bool(state.batch_stats)
  mutable = ["batch_stats"] if has_stats else []
  capture = {}
  if robust_opts.dann:
    mutable, capture = mutable + ["intermediates"], {
        "capture_intermediates": robust.block_filter(robust_opts.last_block)}

  def loss_fn(params):
    variables = model_variables(robust.without_source_head(params), state.batch_stats)
    out = model.apply(variables, batch["image"], train=True, rngs={"dropout": rng},
                      mutable=mutable or False, **capture)
    logits, collections = out if mutable else (out, {})
    stats = {"batch_stats": collections["batch_stats"]} if has_stats else {}
    if not (robust_opts.dro or robust_opts.dann):
      return LOSSES[loss](logits, targets, batch["weight"]), (logits, stats, state.robust, {})
    value, new_robust, extra = _robust_loss(params, logits, targets,
                                            collections.get("intermediates", {}), state, batch,
                                            robust_opts)
    return value, (logits, stats, new_robust, extra)

  (value, (logits, stats, new_robust, extra)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Frozen blocks sit behind the model's stop_gradient: their gradients are zeros on every device
  # and the optimiser ignores them, so they need no all-reduce.
  grads = {k: g if k in frozen else _device_mean(g) for k, g in grads.items()}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau_state.scale.astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  batch_stats = state.batch_stats
  if has_stats:
    # Averaging the devices' running statistics (as flax's ImageNet example does) keeps replicas
    # identical; frozen stages normalised with their running statistics and keep them exactly.
    batch_stats = _keep_frozen(state.batch_stats, _device_mean(stats["batch_stats"]),
                               frozen)
  metrics = {"loss": value, "accuracy": accuracy(logits, targets, loss),
             "lr_scale": state.plateau_state.scale, **extra}
  if robust_opts.dro:   # the device's share is scaled for the gradient; report the global value
    metrics["loss"] = extra["dro_loss"]
  metrics = _device_mean(metrics)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=batch_stats, robust=new_robust)
  return new_state, metrics


def eval_step(variables, batch, *, model):
  """Per-example logits (padding rows included; the host drops them by mask)."""
  return inference.logits(model, variables, batch["image"])


def make_pmapped_steps(model, tx, num_classes, loss="softmax", frozen=(),
                       robust_opts: robust.Options = robust.OFF):
  """pmapped (train_step, eval_step); `frozen` and `robust_opts` as in `train_step`."""
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
  if loss != "softmax" and (robust_opts.dro or robust_opts.dann):
    raise ValueError("config.train.group_dro_step / dann_weight are defined for the classes task "
                     "(one label per image), not for multi-label findings")
  p_train = jax.pmap(
      functools.partial(train_step, model=model, tx=tx, num_classes=num_classes, loss=loss,
                        frozen=tuple(frozen), robust_opts=robust_opts),
      axis_name=AXIS, donate_argnums=(0,))
  p_eval = jax.pmap(functools.partial(eval_step, model=model), axis_name=AXIS)
  return p_train, p_eval


def mixup(batch: dict, alpha: float, num_classes: int, rng: np.random.Generator) -> dict:
  """Mixup (Zhang et al.; used by Zhao et al.) over the *global* batch, on the host.

  Done before sharding so that the result does not depend on the number of devices.
  """
  images, labels = batch["image"], batch["label"]
  lead = images.shape[:2]
  flat = images.reshape((-1,) + images.shape[2:])
  onehot = np.eye(num_classes, dtype=np.float32)[labels.reshape(-1)]
  weights = batch["weight"].reshape(-1)
  lam = np.float32(rng.beta(alpha, alpha))
  perm = rng.permutation(flat.shape[0])
  out = dict(batch)
  out["image"] = (lam * flat + (1 - lam) * flat[perm]).reshape(images.shape)
  out["targets"] = (lam * onehot + (1 - lam) * onehot[perm]).reshape(lead + (num_classes,))
  out["weight"] = (lam * weights + (1 - lam) * weights[perm]).reshape(lead)
  return out
