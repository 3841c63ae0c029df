"""Pure, pmapped train and eval steps. Everything random is a function of (seed, step)."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

AXIS = "batch"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau_state: Any      # optax reduce_on_plateau state; .scale multiplies the learning rate
  rng: jax.Array          # base key; per-step keys are fold_in(rng, step)


def cross_entropy(logits, targets, weights):
  """Keras-style class-weighted loss: the batch mean of weight * cross-entropy.

  Normalising by the example count (not the weight sum) keeps the mean over devices equal to the
  mean over the global batch, whatever the number of devices.
  """
  return jnp.mean(optax.softmax_cross_entropy(logits, targets) * weights)


def train_step(state: TrainState, batch, *, model, tx, num_classes):
  """One step on one device's shard; gradients and metrics are averaged over AXIS."""
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
  targets = batch.get("targets")
  if targets is None:
    targets = jax.nn.one_hot(batch["label"], num_classes)

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
    return cross_entropy(logits, targets, batch["weight"]), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau_state.scale.astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
  metrics = {"loss": loss, "accuracy": accuracy, "lr_scale": state.plateau_state.scale}
  metrics = jax.lax.pmean(metrics, AXIS)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch, *, model):
  """Per-example logits (padding rows included; the host drops them by mask)."""
  return model.apply({"params": params}, batch["image"], train=False)


def make_pmapped_steps(model, tx, num_classes):
  p_train = jax.pmap(
      functools.partial(train_step, model=model, tx=tx, num_classes=num_classes),
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
