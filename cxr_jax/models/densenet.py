"""DenseNet121 (Huang et al. 2017) in five named stages, with the head of `vgg.Head`.

Stages are the unit the fine-tuning degree counts, as VGG's blocks are (`plan.FineTuningPlan`
names them):

  stage1  conv0 (7x7/2) + norm0 + ReLU + 3x3/2 max-pool          (torchvision: features.conv0..pool0)
  stage2  denselayer1..6   + transition (norm, ReLU, 1x1 conv, 2x2 avg-pool)   (denseblock1, transition1)
  stage3  denselayer1..12  + transition                                        (denseblock2, transition2)
  stage4  denselayer1..24  + transition                                        (denseblock3, transition3)
  stage5  denselayer1..16                                                      (denseblock4)
  features  norm5 (torchvision: features.norm5) + ReLU, the final feature map
  head    `vgg.Head(kind="gap")`: dense1..n + ReLU + dropout, logits

A dense layer is norm1, ReLU, conv1 (1x1, 4*growth), norm2, ReLU, conv2 (3x3, growth); its output
is concatenated to its input. Convs have no bias (kernels HWIO); BatchNorm has params
{scale, bias} and batch_stats {mean, var} (torch momentum 0.1 = flax momentum 0.9, eps 1e-5), so
torchvision's ImageNet `densenet121` ports into this tree (see `cxr_jax.weights`).

Frozen stages (`frozen_blocks`) sit behind a stop_gradient AND normalise with their running
statistics even with train=True, so training never changes their batch_stats; `features` (norm5)
belongs to the head side and always trains. Train mode needs `mutable=["batch_stats"]`.

Grad-CAM layers (zero perturbations, each activation also sown in intermediates under the same
name): perturbations["stageK"]["output_out"] (a stage's output) and
perturbations["features"]["relu_out"] (the ReLU of norm5, the usual DenseNet CAM layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models.plan import FineTuningPlan
from cxr_jax.models.vgg import Head, conv_class

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4", "stage5")
DENSENET_LAYERS = {121: (6, 12, 24, 16)}   # dense layers in denseblock1..4
GROWTH_RATE = 32
BN_SIZE = 4                                # bottleneck width = BN_SIZE * GROWTH_RATE
STEM_FEATURES = 64
_STARTS = ("input",) + STAGE_NAMES
_STOPS = STAGE_NAMES + ("logits",)


def _norm(use_running_average: bool, dtype, name: str) -> nn.BatchNorm:
  # torchvision's BatchNorm2d defaults: momentum 0.1 (flax counts the kept share), eps 1e-5.
  return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1-BN-ReLU-conv3x3; returns the input with `growth` new channels appended."""
  growth: int = GROWTH_RATE
  bn_size: int = BN_SIZE
  conv_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    conv = conv_class(self.conv_impl)
    y = nn.relu(_norm(use_running_average, self.dtype, "norm1")(x))
    y = conv(self.bn_size * self.growth, (1, 1), use_bias=False, dtype=self.dtype, name="conv1")(y)
    y = nn.relu(_norm(use_running_average, self.dtype, "norm2")(y))
    y = conv(self.growth, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
             name="conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class Stem(nn.Module):
  """conv0 7x7/2 (pad 3) + norm0 + ReLU + 3x3/2 max-pool (pad 1)."""
  conv_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    x = conv_class(self.conv_impl)(STEM_FEATURES, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                                   use_bias=False, dtype=self.dtype, name="conv0")(x)
    x = nn.relu(_norm(use_running_average, self.dtype, "norm0")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = self.perturb("output_out", x)
    self.sow("intermediates", "output_out", x)
    return x


class DenseStage(nn.Module):
  """A dense block (denselayer1..n) and, unless it is the last, a transition halving channels
  and resolution."""
  num_layers: int
  transition: bool
  growth: int = GROWTH_RATE
  conv_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    for j in range(self.num_layers):
      x = DenseLayer(self.growth, conv_impl=self.conv_impl, dtype=self.dtype, name=f"denselayer{j + 1}")(
          x, use_running_average=use_running_average)
    if self.transition:
      x = nn.relu(_norm(use_running_average, self.dtype, "norm")(x))
      x = conv_class(self.conv_impl)(x.shape[-1] // 2, (1, 1), use_bias=False, dtype=self.dtype,
                                     name="conv")(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = self.perturb("output_out", x)
    self.sow("intermediates", "output_out", x)
    return x


class Features(nn.Module):
  """norm5 + ReLU: the final feature map (the usual DenseNet Grad-CAM layer, "features")."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    x = nn.relu(_norm(use_running_average, self.dtype, "norm5")(x))
    x = self.perturb("relu_out", x)
    self.sow("intermediates", "relu_out", x)
    return x


class DenseNet(nn.Module):
  """DenseNet121 backbone in five stages + norm5 + a VGG-style GAP head.

  Attributes as `VGG`'s (num_classes, hidden, dropout, frozen_blocks, conv_impl, dtype), with
  `frozen_blocks` counting stages; `depth` selects the dense layers per block (121 only).
  `block_sizes` and `growth_rate` override them for small test networks (no pretrained weights).
  """
  depth: int = 121
  block_sizes: Sequence[int] | None = None
  growth_rate: int = GROWTH_RATE
  num_classes: int = 3
  hidden: Sequence[int] = (256,)
  dropout: float = 0.5
  frozen_blocks: int = 0
  conv_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, start: str = "input", stop: str = "logits"):
    """Runs the stages after `start` up to and including `stop` (as `VGG.__call__`).

    Args:
      x: NHWC float, normalised images if start="input", else the output of stage `start`.
      train: batch statistics and dropout; needs mutable=["batch_stats"] (frozen stages still
        use, and keep, their running statistics).
      start: "input" or a stage name whose output `x` is.
      stop: a stage name, or "logits".
    """
    if start not in _STARTS:
      raise ValueError(f"start must be one of {_STARTS}, got {start!r}")
    if stop not in _STOPS:
      raise ValueError(f"stop must be one of {_STOPS}, got {stop!r}")
    first, last = _STARTS.index(start), _STOPS.index(stop)
    if first > last:
      raise ValueError(f"stop={stop!r} comes before start={start!r}")
    plan = FineTuningPlan.freezing(STAGE_NAMES, self.frozen_blocks)
    layers = self.block_sizes or DENSENET_LAYERS.get(self.depth)
    if layers is None or len(layers) != len(STAGE_NAMES) - 1:
      raise ValueError(f"DenseNet depth must be one of {sorted(DENSENET_LAYERS)} (or block_sizes "
                       f"4 dense block lengths), got depth={self.depth!r}, block_sizes={layers!r}")

    x = x.astype(self.dtype)
    for i in range(first, min(last + 1, len(STAGE_NAMES))):
      name = STAGE_NAMES[i]
      kw = dict(conv_impl=self.conv_impl, dtype=self.dtype, name=name)
      stage = (Stem(**kw) if i == 0 else
               DenseStage(layers[i - 1], transition=i < len(STAGE_NAMES) - 1,
                          growth=self.growth_rate, **kw))
      x = stage(x, use_running_average=name in plan.frozen or not train)
      if name == plan.boundary:
        x = jax.lax.stop_gradient(x)
    if stop != "logits":
      return x
    x = Features(dtype=self.dtype, name="features")(x, use_running_average=not train)
    return Head(self.num_classes, "gap", tuple(self.hidden), self.dropout, dtype=self.dtype,
                name="head")(x, train=train)
