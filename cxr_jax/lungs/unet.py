"""A U-Net for lung fields: VGG16 encoder blocks with ImageNet weights (TernausNet, Iglovikov &
Shvets 2018) or a narrow encoder from scratch, a decoder of upsample + concatenate + two 3x3
convs per level, one logit per pixel.

Encoder params are named as in `cxr_jax.models.vgg` (`block1/conv1/kernel`, ...), so the stored
ImageNet VGG16 weights merge in unchanged (`init_params`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import ops
from cxr_jax.models import vgg
from cxr_jax.ops import pool


def _up2(x):
  """Nearest-neighbour 2x upsampling (its gradient is a 2x2 sum: cheap on CPU)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(nn.Module):
  encoder: str = "vgg16"
  encoder_blocks: int = 4
  frozen_blocks: int = 0
  decoder_widths: Sequence[int] = (128, 64, 32, 16)
  scratch_widths: Sequence[int] = (16, 32, 64, 128)
  conv_impl: str = "xla"

  def _encoder_spec(self):
    if self.encoder == "vgg16":
      return [(vgg.BLOCK_NAMES[i], vgg.BLOCK_WIDTHS[i], vgg.CONVS_PER_BLOCK[16][i])
              for i in range(self.encoder_blocks)]
    if self.encoder == "none":
      return [(vgg.BLOCK_NAMES[i], w, 2) for i, w in enumerate(self.scratch_widths)]
    raise ValueError(f"lung encoder must be 'vgg16' or 'none', got {self.encoder!r}")

  @nn.compact
  def __call__(self, x):
    """x: [N, S, S, 3] normalised images (S divisible by 2**encoder_blocks) -> logits [N, S, S]."""
    spec = self._encoder_spec()
    if len(self.decoder_widths) != len(spec):
      raise ValueError(f"need one decoder width per encoder block ({len(spec)}), got "
                       f"{tuple(self.decoder_widths)}")
    if x.shape[1] % 2 ** len(spec) or x.shape[2] % 2 ** len(spec):
      raise ValueError(f"image side {x.shape[1:3]} must be divisible by {2 ** len(spec)}")
    conv = vgg.conv_class(ops.resolve(self.conv_impl))
    skips = []
    for i, (name, width, n) in enumerate(spec):
      x = _Convs(width, n, conv, name=name)(x)
      if i + 1 == self.frozen_blocks:
        x = jax.lax.stop_gradient(x)
      skips.append(x)
      x = pool.pool_2x2("fast", x)
    x = _Convs(self.decoder_widths[0], 2, conv, name="center")(x)
    for i, (skip, width) in enumerate(zip(reversed(skips), self.decoder_widths, strict=True)):
      x = jnp.concatenate([_up2(x), skip], axis=-1)
      x = _Convs(width, 2, conv, name=f"up{len(spec) - i}")(x)
    return nn.Dense(1, name="logits")(x)[..., 0]


class _Convs(nn.Module):
  """`n` 3x3 SAME conv + ReLU layers named conv1..conv<n> (VGG's names)."""
  features: int
  n: int
  conv: type

  @nn.compact
  def __call__(self, x):
    for j in range(self.n):
      x = nn.relu(self.conv(self.features, kernel_size=(3, 3), padding="SAME",
                            name=f"conv{j + 1}")(x))
    return x


def create(recipe) -> UNet:
  return UNet(encoder=recipe.encoder, encoder_blocks=recipe.encoder_blocks,
              frozen_blocks=recipe.frozen_blocks, decoder_widths=tuple(recipe.decoder_widths),
              scratch_widths=tuple(recipe.scratch_widths), conv_impl=getattr(recipe, "conv_impl", "auto"))


def init_params(model: UNet, recipe, rng) -> tuple[dict, str, str]:
  """Fresh params with the ImageNet VGG16 blocks merged in (encoder="vgg16"), their version ("" from
  scratch) and the input normalisation they expect (a key of `weights.PREPROCESSING`)."""
  size = recipe.image_size
  params = model.init(rng, jnp.zeros((1, size, size, 3)))["params"]
  params = jax.tree.map(np.asarray, params)
  if recipe.encoder != "vgg16":
    return params, "", "torchvision"
  from cxr_jax.weights import load_pretrained, merge_pretrained
  pretrained = load_pretrained("vgg16")
  wanted = {k: v for k, v in pretrained.params.items() if k in params}
  return (merge_pretrained(dict(params), wanted), pretrained.version,
          pretrained.preprocessing)
