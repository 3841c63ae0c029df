"""Max-pooling with window == stride (VGG's 2x2/2) whose gradient is elementwise.

XLA's CPU max-pool gradient (select-and-scatter) costs more than the rest of the pooling layer by
far: 380 ms for VGG16's first pool at 224 px, batch 8, where the pool itself takes 6 ms (2-core
AMD EPYC), ~0.7 s of a full fine-tuning step over the five pools. Non-overlapping windows can be
reshaped into their own axes instead; the gradient is then a mask. The mask picks the first
maximal element of each window in row-major order, which is what XLA's select-and-scatter does,
so the result and its gradient are bit-identical to `flax.linen.max_pool` (tested with ties).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

POOL_IMPLS = ("xla", "fast")


def _windows(x, window: tuple[int, int]):
  """x [N, H, W, C] cropped to whole windows (VALID) and reshaped to [N, H', kh, W', kw, C]."""
  n, h, w, c = x.shape
  kh, kw = window
  ho, wo = h // kh, w // kw
  return x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, window: tuple[int, int] = (2, 2)):
  """nn.max_pool(x, window, strides=window, padding="VALID") for NHWC x."""
  return _windows(x, window).max(axis=(2, 4))


def _fwd(x, window):
  y = max_pool(x, window)
  return y, (x, y)


def _bwd(window, res, dy):
  x, y = res
  xw = _windows(x, window)
  kh, kw = window
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for i in range(kh):  # row-major over the window, first maximum wins
    row = []
    for j in range(kw):
      hit = (xw[:, :, i, :, j] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, dy, jnp.zeros_like(dy)))
    parts.append(jnp.stack(row, axis=3))
  dx = jnp.stack(parts, axis=2).reshape(y.shape[0], y.shape[1] * kh, y.shape[2] * kw, y.shape[3])
  pad = ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0))
  return (jnp.pad(dx, pad),)


max_pool.defvjp(_fwd, _bwd)


def pool_2x2(pool_impl: str, x):
  """VGG's 2x2, stride-2, VALID max-pool with the implementation `config.model.pool_impl` names."""
  if pool_impl == "xla":
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
  if pool_impl == "fast":
    return max_pool(x, (2, 2))
  raise ValueError(f"config.model.pool_impl={pool_impl!r} is not one of {list(POOL_IMPLS)}")
