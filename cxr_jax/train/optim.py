"""Optimiser for fine-tuning: degree masks, the paper's RMSprop, plateau schedule, early stopping.

Lee et al. fine-tune the last k of the five conv blocks (the fine-tuning degree FTk) with Keras'
RMSprop at lr 1e-5, ReduceLROnPlateau and EarlyStopping on the validation loss. Freezing is done twice
on purpose, both from one `models.FineTuningPlan`: `optax.multi_transform` over its `param_labels`
guarantees frozen parameters never move (and keeps no optimiser state for them), while the model's
stop_gradient at its `boundary` saves their backward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections
import optax
from optax import contrib as optax_contrib

from cxr_jax.models.plan import FROZEN, TRAINABLE, FineTuningPlan


def learning_rate(train_config: ml_collections.ConfigDict,
                  total_steps: int | None = None) -> float | optax.Schedule:
  """config.train.learning_rate, or the schedule config.train.lr_schedule makes of it.

  "constant" stays a float, so the optimiser state (and old checkpoints) keep their structure.
  "cosine" anneals to zero at `total_steps`: the last epochs' parameters are then settled instead of
  a sample of the constant rate's step-to-step noise (at the quick start's 1e-4, validation accuracy
  moves by up to 0.15 between points 10 steps apart: results/quickstart_levers/).
  """
  lr, kind = train_config.learning_rate, train_config.lr_schedule
  if kind == "constant":
    return lr
  if kind != "cosine":
    raise ValueError(f"config.train.lr_schedule={kind!r}: use constant or cosine")
  if not total_steps or total_steps <= train_config.warmup_steps:
    raise ValueError(
        f"config.train.lr_schedule='cosine' needs the run's length in steps ({total_steps}) to be "
        f"more than config.train.warmup_steps={train_config.warmup_steps}: lower warmup_steps "
        f"(e.g. --config.train.warmup_steps=0) for a run this short")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if train_config.warmup_steps else lr, peak_value=lr,
      warmup_steps=train_config.warmup_steps, decay_steps=total_steps, end_value=0.0)


def base_optimizer(train_config: ml_collections.ConfigDict,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """The optimiser for trainable parameters, without the plateau scale.

  `total_steps` (the run's length) is needed only by a learning-rate schedule that anneals.
  """
  name, lr = train_config.optimizer, learning_rate(train_config, total_steps)
  if name == "rmsprop":
    # Keras' RMSprop (the paper's stack): rho 0.9, eps 1e-7 added *outside* the square root.
    return optax.rmsprop(lr, decay=0.9, eps=1e-7, eps_in_sqrt=False)
  if name == "adam":
    return optax.adam(lr)
  if name == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"config.train.optimizer={name!r}: use rmsprop, adam or sgd")


def make_optimizer(params: Mapping, plan: FineTuningPlan, train_config: ml_collections.ConfigDict,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """`base_optimizer` for what `plan` trains; the frozen parameters' updates are zeros."""
  return optax.multi_transform(
      {TRAINABLE: base_optimizer(train_config, total_steps), FROZEN: optax.set_to_zero()},
      plan.param_labels(params))


def make_plateau(train_config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """ReduceLROnPlateau, fed once per epoch with the validation loss (hence accumulation_size=1).

  Every optimiser above is linear in its learning rate, so scaling the updates by the plateau's scale
  is exactly a learning-rate reduction.
  """
  return optax_contrib.reduce_on_plateau(
      factor=train_config.plateau_factor,
      patience=train_config.plateau_patience,
      min_scale=train_config.plateau_min_scale,
      accumulation_size=1)


def plateau_step(plateau, plateau_state, val_loss: float):
  """Feeds one epoch's validation loss; returns the new state (its `.scale` multiplies the lr)."""
  _, new_state = plateau.update(updates={}, state=plateau_state, value=val_loss)
  return new_state


@dataclasses.dataclass
class EarlyStopping:
  """Early stopping on validation loss; the best epoch's parameters are the ones kept."""
  patience: int
  min_delta: float = 0.0
  best_loss: float = float("inf")
  best_epoch: int = -1
  bad_epochs: int = 0

  def update(self, epoch: int, val_loss: float) -> tuple[bool, bool]:
    """Returns (improved, should_stop)."""
    if val_loss < self.best_loss - self.min_delta:
      self.best_loss, self.best_epoch, self.bad_epochs = float(val_loss), epoch, 0
      return True, False
    self.bad_epochs += 1
    return False, self.bad_epochs >= self.patience

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping) -> EarlyStopping:
    return cls(**d)
