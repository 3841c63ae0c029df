"""Optimiser for fine-tuning: degree masks, the paper's RMSprop, plateau schedule, early stopping.

Lee et al. fine-tune the last k of the five conv blocks (the fine-tuning degree FTk) with Keras'
RMSprop at lr 1e-5, ReduceLROnPlateau and EarlyStopping on the validation loss. Freezing is done twice
on purpose: `optax.multi_transform` guarantees frozen parameters never move (and keeps no optimiser
state for them), while the model's stop_gradient at the frozen boundary saves their backward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import ml_collections
import optax
from optax import contrib as optax_contrib

NUM_BLOCKS = 5
TRAINABLE, FROZEN = "trainable", "frozen"


def block_index(name: str) -> int | None:
  """1..5 for a backbone block name ('block3', 'denseblock2'-style names count too), else None."""
  digits = "".join(ch for ch in name if ch.isdigit())
  if name.startswith(("block", "stage")) and digits:
    return int(digits)
  return None


def trainable_block_names(trainable_blocks: int) -> tuple[str, ...]:
  """Names of the blocks that train at fine-tuning degree k (the last k, counted from the top)."""
  if not 0 <= trainable_blocks <= NUM_BLOCKS:
    raise ValueError(
        f"config.model.trainable_blocks={trainable_blocks}: the fine-tuning degree must be in "
        f"0..{NUM_BLOCKS} (number of conv blocks trained, counted from the top)")
  return tuple(f"block{i}" for i in range(NUM_BLOCKS - trainable_blocks + 1, NUM_BLOCKS + 1))


def param_labels(params: Mapping, trainable_blocks: int) -> dict:
  """A label per parameter leaf: 'frozen' for the first 5-k blocks, 'trainable' for the rest + head."""
  first_trainable = NUM_BLOCKS - trainable_blocks + 1
  trainable_block_names(trainable_blocks)  # validates k

  def label_for(top_level_name):
    idx = block_index(top_level_name)
    return FROZEN if idx is not None and idx < first_trainable else TRAINABLE

  return {name: jax.tree.map(lambda _, n=name: label_for(n), sub) for name, sub in params.items()}


def frozen_names(tree: Mapping, trainable_blocks: int) -> tuple[str, ...]:
  """Top-level names of `tree` (params or batch_stats) that belong to frozen blocks."""
  labels = param_labels({name: 0 for name in tree}, trainable_blocks)
  return tuple(name for name, label in labels.items() if label == FROZEN)


def base_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimiser for trainable parameters, without the plateau scale."""
  name, lr = train_config.optimizer, train_config.learning_rate
  if name == "rmsprop":
    # Keras' RMSprop (the paper's stack): rho 0.9, eps 1e-7 added *outside* the square root.
    return optax.rmsprop(lr, decay=0.9, eps=1e-7, eps_in_sqrt=False)
  if name == "adam":
    return optax.adam(lr)
  if name == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"config.train.optimizer={name!r}: use rmsprop, adam or sgd")


def make_optimizer(params: Mapping, config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  labels = param_labels(params, config.model.trainable_blocks)
  return optax.multi_transform(
      {TRAINABLE: base_optimizer(config.train), FROZEN: optax.set_to_zero()}, labels)


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
