"""The fine-tuning plan: what trains at fine-tuning degree FTk, defined once.

Lee et al.'s FTk trains the last k of a backbone's five blocks and the head;
`config.model.trainable_blocks` is k. `models.fine_tuning_plan(config.model)` names the blocks
(VGG: block1..block5, DenseNet: stage1..stage5) and everything that depends on k reads it:

  models (`vgg`, `densenet`)  a stop_gradient on the output of `boundary`, the last frozen block,
                              so the frozen blocks cost no backward pass; DenseNet's frozen stages
                              normalise with their running statistics, even in training;
  `train.optim`               `param_labels` for optax.multi_transform: frozen parameters never
                              move and keep no optimiser state;
  `train.step`                the `frozen` blocks' gradients need no all-reduce and their
                              batch_stats stay bitwise as they were;
  `train.feature_cache`       caches the output of `boundary`, keyed by the `frozen` blocks' weights;
  `train.overview`            counts parameters per label.

Top-level names that are not blocks (the head, DenseNet's `features` (norm5), robust training's
`source_head`) always train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax

TRAINABLE, FROZEN = "trainable", "frozen"


@dataclasses.dataclass(frozen=True)
class FineTuningPlan:
  """The last `trainable_blocks` of `block_names` (a backbone's blocks, input side first) train."""
  block_names: tuple[str, ...]
  trainable_blocks: int

  def __post_init__(self):
    n = len(self.block_names)
    if not 0 <= self.trainable_blocks <= n:
      raise ValueError(
          f"config.model.trainable_blocks={self.trainable_blocks}: the fine-tuning degree must be "
          f"in 0..{n} (number of blocks trained, counted from the top)")

  @classmethod
  def freezing(cls, block_names: Sequence[str], frozen_blocks: int) -> FineTuningPlan:
    """The plan of a model whose first `frozen_blocks` blocks are frozen (its own attribute)."""
    if not 0 <= frozen_blocks <= len(block_names):
      raise ValueError(f"frozen_blocks must be in 0..{len(block_names)}, got {frozen_blocks}")
    return cls(tuple(block_names), len(block_names) - frozen_blocks)

  @property
  def frozen(self) -> tuple[str, ...]:
    """Names of the frozen blocks, input side first."""
    return self.block_names[:len(self.block_names) - self.trainable_blocks]

  @property
  def trainable(self) -> tuple[str, ...]:
    """Names of the blocks that train (the last k)."""
    return self.block_names[len(self.block_names) - self.trainable_blocks:]

  @property
  def boundary(self) -> str | None:
    """The last frozen block: its output gets the stop_gradient, and is what the frozen-feature
    cache stores (the trainable part runs with `start=boundary`). None when every block trains."""
    return self.frozen[-1] if self.frozen else None

  def param_labels(self, params: Mapping) -> dict:
    """TRAINABLE / FROZEN per leaf of `params` (top-level names: blocks, head, ...), the labels of
    optax.multi_transform. Refuses a tree without this plan's blocks (a plan of another arch)."""
    missing = [name for name in self.block_names if name not in params]
    if missing:
      raise ValueError(f"the fine-tuning plan's blocks {missing} are not in the parameters "
                       f"(top-level names {sorted(params)}): a plan made for another arch?")
    labels = {}
    for name, sub in params.items():
      label = FROZEN if name in self.frozen else TRAINABLE
      labels[name] = jax.tree.map(lambda _, label=label: label, sub)
    return labels
