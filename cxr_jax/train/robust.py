"""Source-robust training losses: group DRO over (source, label) cells, and domain-adversarial
training (a source classifier behind a gradient-reversal layer). Both read config.train
(group_dro_step, dann_weight, dann_hidden); both are off at their defaults.

Groups: public COVID-19 collections confound the label with the collection (cxr3: every normal and
pneumonia image of NIH, none of its COVID), so a model can score well by recognising the source.
Group DRO (Sagawa et al. 2020) up-weights the (source, label) cells it does worst on, e.g. ieee8023's
non-COVID pneumonia; DANN (Ganin et al. 2016) penalises features from which the source can be read.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

SOURCE_HEAD = "source_head"           # its top-level name in the params; never in a kept model
DANN_LOSSES = ("reversal", "confusion")


@dataclasses.dataclass(frozen=True)
class Options:
  """The robust-training settings a train step needs (static: part of the compiled step)."""
  group_dro_step: float = 0.0
  dann_weight: float = 0.0
  dann_hidden: int = 256
  dann_loss: str = "reversal"       # or "confusion" (`source_loss`)
  total_steps: int = 1              # of the run, for the DANN schedule
  last_block: str = ""              # the backbone's last block (FineTuningPlan.block_names[-1])

  @classmethod
  def from_config(cls, train_config, total_steps: int, last_block: str = "") -> Options:
    dro, dann = float(train_config.get("group_dro_step", 0.0)), float(
        train_config.get("dann_weight", 0.0))
    if dro < 0 or dann < 0:
      raise ValueError(f"config.train.group_dro_step={dro} and config.train.dann_weight={dann} "
                       "must be >= 0 (0 = off)")
    mode = str(train_config.get("dann_loss", "reversal"))
    if mode not in DANN_LOSSES:
      raise ValueError(f"config.train.dann_loss={mode!r}: use one of {DANN_LOSSES}")
    return cls(dro, dann, int(train_config.get("dann_hidden", 256)), mode, int(total_steps),
               last_block)

  @property
  def dro(self) -> bool:
    return self.group_dro_step > 0

  @property
  def dann(self) -> bool:
    return self.dann_weight > 0


OFF = Options()   # plain empirical risk: neither group DRO nor DANN


def group_table(metadata, num_classes: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
  """(source names, source index per example id, (source, label) cell per example id).

  Cell = source index * num_classes + label; examples without a label (-1) get cell -1.
  """
  sources = np.asarray(metadata["source"]).astype(str)
  names, source_index = np.unique(sources, return_inverse=True)
  labels = np.asarray(metadata["label"])
  cells = np.where(labels >= 0, source_index * num_classes + labels, -1)
  return tuple(names), source_index.astype(np.int32), cells.astype(np.int32)


def initial_group_weights(train_cells: np.ndarray, num_groups: int) -> np.ndarray:
  """Uniform over the cells the training split holds; cells it lacks never get weight."""
  present = np.bincount(train_cells, minlength=num_groups) > 0
  return (present / present.sum()).astype(np.float32)


def group_losses(losses, groups, num_groups: int, axis_name: str):
  """(sum of losses per group on this device, example count per group over all devices)."""
  sums = jax.ops.segment_sum(losses, groups, num_segments=num_groups)
  counts = jax.lax.psum(jax.ops.segment_sum(jnp.ones_like(losses), groups,
                                            num_segments=num_groups), axis_name)
  return sums, counts


def dro_update(weights, group_mean, present, step_size: float):
  """Sagawa et al.'s online step: q_g <- q_g exp(eta * loss_g) for the groups in the batch,
  renormalised. Absent groups keep their weight (relative to each other)."""
  logits = jnp.log(jnp.maximum(weights, 1e-30)) + step_size * jnp.where(present, group_mean, 0.0)
  new = jax.nn.softmax(jnp.where(weights > 0, logits, -jnp.inf))
  return jax.lax.stop_gradient(new)


def dro_loss(losses, groups, weights, *, step_size: float, axis_name: str):
  """(this device's share of the group-DRO loss, new group weights, global DRO loss value).

  The device's share is scaled so that the mean of the devices' gradients (the step's pmean) is
  the gradient of sum_g q_g * mean loss of group g over the global batch.
  """
  num_groups = weights.shape[0]
  sums, counts = group_losses(losses, groups, num_groups, axis_name)
  present = counts > 0
  global_mean = jax.lax.psum(sums, axis_name) / jnp.maximum(counts, 1.0)
  new_weights = dro_update(weights, global_mean, present, step_size)
  num_devices = jax.lax.psum(1, axis_name)
  local = num_devices * jnp.sum(new_weights * sums / jnp.maximum(counts, 1.0))
  return local, new_weights, jnp.sum(new_weights * global_mean)


@jax.custom_vjp
def grad_reverse(x, scale):
  """Identity forward; the backward pass multiplies the gradient by -scale (Ganin et al.)."""
  return x


def _grad_reverse_fwd(x, scale):
  return x, scale


def _grad_reverse_bwd(scale, g):
  return -scale * g, jnp.zeros_like(scale)


grad_reverse.defvjp(_grad_reverse_fwd, _grad_reverse_bwd)


def dann_scale(step, total_steps: int, weight: float):
  """Ganin et al.'s schedule: weight * (2 / (1 + exp(-10 p)) - 1) at progress p = step / total."""
  progress = jnp.clip(step / max(int(total_steps), 1), 0.0, 1.0)
  return weight * (2.0 / (1.0 + jnp.exp(-10.0 * progress)) - 1.0)


class SourceHead(nn.Module):
  """The source classifier of DANN: pooled last-block features -> one logit per source."""
  num_sources: int
  hidden: int = 256

  @nn.compact
  def __call__(self, pooled):
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(pooled.astype(jnp.float32)))
    return nn.Dense(self.num_sources, name="logits")(x)


def block_filter(name: str):
  """capture_intermediates filter: the output of the block called `name`."""
  return lambda module, method_name: method_name == "__call__" and module.name == name


def captured_features(intermediates, name: str) -> jax.Array:
  """Block `name`'s output from a model.apply(..., capture_intermediates=block_filter(name))."""
  if name not in intermediates:
    raise KeyError(f"no output of block {name!r} captured for config.train.dann_weight")
  return intermediates[name]["__call__"][0]


def source_loss(params, features, sources, scale, hidden: int, mode: str = "reversal"):
  """(loss to add, the source classifier's cross-entropy, its accuracy) on average-pooled features.

  "reversal" (Ganin et al.): the classifier's cross-entropy through the gradient reversal, so the
  backbone maximises what the classifier minimises; unbounded above, it diverged on cxr3 + cxr-plus
  (results/robustness_multisource_128px/dann_*diverged.txt). "confusion" (Tzeng et al. 2015,
  Alvi et al. 2018): the classifier learns the source on detached features, and the backbone is
  moved, with the classifier held fixed, toward features it reads as every source alike (scale x
  the cross-entropy to the uniform distribution): bounded below by log(#sources), so the backbone
  cannot win by pushing the classifier's loss to infinity."""
  pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
  num_sources = params["logits"]["bias"].shape[0]
  head = SourceHead(num_sources, hidden)
  reversal = mode == "reversal"
  seen = grad_reverse(pooled, scale) if reversal else jax.lax.stop_gradient(pooled)
  logits = head.apply({"params": params}, seen)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, sources))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == sources)
  if reversal:
    return ce, ce, accuracy
  fooled = head.apply({"params": jax.lax.stop_gradient(params)}, pooled)
  confusion = -jnp.mean(jax.nn.log_softmax(fooled, axis=-1))
  return ce + scale * confusion, ce, accuracy


def init_source_head(rng, num_sources: int, width: int, hidden: int) -> dict:
  return SourceHead(num_sources, hidden).init(rng, jnp.zeros((1, width), jnp.float32))["params"]


def without_source_head(params) -> dict:
  """The model's own parameters: what a kept checkpoint holds."""
  return {k: v for k, v in params.items() if k != SOURCE_HEAD}
