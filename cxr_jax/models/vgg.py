"""VGG16 / VGG19 (Simonyan & Zisserman 2015) with the classification head of Lee et al. (2020).

The backbone is five named blocks `block1`..`block5`; each holds `conv1`, `conv2`, ... (3x3, SAME,
ReLU, kernels HWIO) and ends with a 2x2 max-pool. A block is the unit the fine-tuning degree counts:
FTk trains the last k blocks, i.e. `frozen_blocks = 5 - k` (see `plan.FineTuningPlan`).

Layer order and shapes match torchvision's `vgg16().features` / `vgg19().features` and Keras's
`VGG16(include_top=False)`, so their ImageNet weights port into this tree unchanged
(see `cxr_jax.weights`).

Collections besides 'params' (take `variables["params"]` from `init`):
  perturbations[block][f"{conv}_out"]  zero, added to each conv's ReLU output (Grad-CAM gradients);
  intermediates[block]["output"]       each block's output, sown when 'intermediates' is mutable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax import ops
from cxr_jax.models.plan import FineTuningPlan
from cxr_jax.ops import pool

BLOCK_NAMES = ("block1", "block2", "block3", "block4", "block5")
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_STARTS = ("input",) + BLOCK_NAMES
_STOPS = BLOCK_NAMES + ("logits",)


def conv_class(conv_impl: str) -> type[nn.Module]:
  """The convolution layer class for `conv_impl`.

  "xla" is `flax.linen.Conv`; other names are looked up in `cxr_jax.ops.conv_module` (the
  performance ops), which must return a class with Conv's constructor and param names
  (`kernel` HWIO, `bias`) so that ported weights fit every implementation.
  """
  if conv_impl == "xla":
    return nn.Conv
  return ops.conv_module(conv_impl)


def block_convs(depth: int) -> list[tuple[str, str, int]]:
  """(block, conv, out_channels) for every conv layer of VGG`depth`, in forward order."""
  if depth not in CONVS_PER_BLOCK:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}")
  return [(block, f"conv{j + 1}", width)
          for block, width, n in zip(BLOCK_NAMES, BLOCK_WIDTHS, CONVS_PER_BLOCK[depth], strict=True)
          for j in range(n)]


class VGGBlock(nn.Module):
  """`num_convs` 3x3 conv + ReLU layers followed by a 2x2 max-pool."""
  features: int
  num_convs: int
  conv_impl: str = "xla"
  pool_impl: str = "fast"  # as config.model.pool_impl; bit-identical to flax's max_pool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = conv_class(self.conv_impl)
    # The ReLU in the convolution's own epilogue where the class has one (ops.conv.conv2d).
    fused = {"relu": True} if ops.fuses_relu(conv) else {}
    for j in range(self.num_convs):
      name = f"conv{j + 1}"
      x = conv(self.features, kernel_size=(3, 3), padding="SAME", dtype=self.dtype, name=name,
               **fused)(x)
      if not fused:
        x = nn.relu(x)
      # Grad-CAM differentiates w.r.t. this zero perturbation (linen forbids reusing the
      # param name): perturbations[block][f"{conv}_out"].
      x = self.perturb(f"{name}_out", x)
    x = pool.pool_2x2(self.pool_impl, x)
    self.sow("intermediates", "output", x)  # intermediates[block]["output"] == (x,)
    return x


class Head(nn.Module):
  """Lee et al.'s classifier: flatten (or global average pool), dense+ReLU+dropout layers, logits.

  "flatten" flattens the NHWC block5 output row-major over (H, W, C), as Keras's `Flatten` does
  with channels_last, so the size of `dense1` depends on the input size.
  """
  num_classes: int = 3
  kind: str = "flatten"
  hidden: Sequence[int] = (256,)
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.kind == "flatten":
      x = x.reshape((x.shape[0], -1))
    elif self.kind == "gap":
      x = jnp.mean(x, axis=(1, 2))
    else:
      raise ValueError(f"model.head must be 'flatten' or 'gap', got {self.kind!r}")
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, dtype=self.dtype, name=f"dense{i + 1}")(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
    return x.astype(jnp.float32)


class VGG(nn.Module):
  """VGG16/19 backbone + head; can start from or stop at any block's output.

  Attributes:
    depth: 16 or 19.
    num_classes: size of the output layer.
    head: "flatten" (Lee et al.) or "gap".
    hidden: widths of the head's hidden dense layers.
    dropout: dropout rate after each hidden dense layer (only with train=True, rng 'dropout').
    frozen_blocks: 0..5; a stop_gradient on the output of block `frozen_blocks` (the plan's
      `boundary`) means blocks 1..frozen_blocks get no gradient and cost no backward pass. Gradients w.r.t. the
      perturbations of frozen blocks are zero too: for Grad-CAM on a frozen block use
      `model.clone(frozen_blocks=0)` (same params).
    conv_impl: convolution implementation, see `conv_class`.
    pool_impl: "xla" (flax's max_pool) or "fast" (`cxr_jax.ops.pool`: same result and gradient
      bit for bit, the gradient 8x faster on CPU).
    dtype: computation dtype (params stay float32; logits are returned as float32).
  """
  # Every parameter is a Conv or Dense kernel or bias, which flax rounds to `dtype` on each call:
  # inference may round them once instead (`evaluate.inference.compute_variables`).
  PARAMS_IN_COMPUTE_DTYPE: ClassVar[bool] = True

  depth: int = 16
  num_classes: int = 3
  head: str = "flatten"
  hidden: Sequence[int] = (256,)
  dropout: float = 0.5
  frozen_blocks: int = 0
  conv_impl: str = "xla"
  pool_impl: str = "fast"  # as config.model.pool_impl; bit-identical to flax's max_pool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, start: str = "input", stop: str = "logits"):
    """Runs the layers after `start` up to and including `stop`.

    Args:
      x: NHWC float, normalised images if start="input", else the output of block `start`.
      train: enables dropout.
      start: "input" or a block name whose output `x` is (frozen-feature cache).
      stop: a block name, or "logits".

    Returns:
      The output of block `stop`, or the logits [N, num_classes] (float32).
    """
    if start not in _STARTS:
      raise ValueError(f"start must be one of {_STARTS}, got {start!r}")
    if stop not in _STOPS:
      raise ValueError(f"stop must be one of {_STOPS}, got {stop!r}")
    first = _STARTS.index(start)  # index into BLOCK_NAMES of the first block to run
    last = _STOPS.index(stop)     # index of the last block to run (5 = all, then head)
    if first > last:
      raise ValueError(f"stop={stop!r} comes before start={start!r}")
    plan = FineTuningPlan.freezing(BLOCK_NAMES, self.frozen_blocks)
    depth_convs = CONVS_PER_BLOCK.get(self.depth)
    if depth_convs is None:
      raise ValueError(f"VGG depth must be 16 or 19, got {self.depth!r}")

    x = x.astype(self.dtype)
    for i in range(first, min(last + 1, len(BLOCK_NAMES))):
      name = BLOCK_NAMES[i]
      x = VGGBlock(BLOCK_WIDTHS[i], depth_convs[i], conv_impl=self.conv_impl,
                   pool_impl=self.pool_impl, dtype=self.dtype, name=name)(x)
      if name == plan.boundary:
        x = jax.lax.stop_gradient(x)
    if stop != "logits":
      return x
    return Head(self.num_classes, self.head, tuple(self.hidden), self.dropout, dtype=self.dtype,
                name="head")(x, train=train)
