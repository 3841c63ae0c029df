"""Formulations of a stride-1 convolution's weight gradient.

XLA on CPU lowers the weight gradient of an NHWC convolution to another convolution whose "kernel"
is the whole output gradient (window = image size) and whose batch is the input channels; that
runs at a fraction of the speed of the forward pass. The weight gradient is a plain contraction
over (batch, height, width), so it can instead be written as matrix products that XLA's CPU dot
(Eigen / YNNPACK, AMX for bfloat16) runs near peak. Which product is fastest depends on the shape,
hence several formulations, all computing

    dw[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] * dy[n, h, w, o].

Every function here takes x [N, H, W, C], dy [N, H', W', O], the kernel shape (KH, KW, C, O) and
the (low, high) padding per spatial dim, and returns dw (KH, KW, C, O) in float32 accumulation
cast to `dtype`. Both matrix operands are kept in row-major "normal" layout ([K, M] @ [M, O]):
XLA CPU's dot is 2-5x slower when the contraction runs along a transposed operand's rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cxr_jax.ops import amx, winograd

_DN = ("NHWC", "HWIO", "NHWC")
Padding = Sequence[tuple[int, int]]


def _taps(kernel_shape) -> list[tuple[int, int]]:
  return [(i, j) for i in range(kernel_shape[0]) for j in range(kernel_shape[1])]


def xla(x, dy, kernel_shape, padding: Padding, dtype):
  """XLA's own weight gradient (the transpose of lax.conv_general_dilated)."""
  w0 = jnp.zeros(kernel_shape, x.dtype)
  _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN),
                   w0)
  return vjp(dy)[0].astype(dtype)


def im2col_t(x, dy, kernel_shape, padding: Padding, dtype):
  """One product cols [KH*KW*C, M] @ dy [M, O], cols built from channel-major x (C, N, H, W)."""
  kh, kw, c, o = kernel_shape
  _, ho, wo, _ = dy.shape
  xt = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0)) + tuple(padding))
  cols = jnp.concatenate([xt[:, :, i:i + ho, j:j + wo] for i, j in _taps(kernel_shape)], axis=0)
  g = jnp.dot(cols.reshape(kh * kw * c, -1), dy.reshape(-1, o), preferred_element_type=jnp.float32)
  return g.reshape(kernel_shape).astype(dtype)


def _dyt_cols(xp, dy, kernel_shape):
  """dy^T [O, M] @ cols [M, KH*KW*C] in float32, cols the NHWC im2col of the already padded xp."""
  kh, kw, c, o = kernel_shape
  _, ho, wo, _ = dy.shape
  cols = jnp.concatenate([xp[:, i:i + ho, j:j + wo, :] for i, j in _taps(kernel_shape)], axis=-1)
  # The barrier keeps XLA from folding the transpose back into the dot as a transposed operand.
  dyt = lax.optimization_barrier(dy.reshape(-1, o).T)
  return jnp.dot(dyt, cols.reshape(-1, kh * kw * c), preferred_element_type=jnp.float32)


def im2col(x, dy, kernel_shape, padding: Padding, dtype):
  """One product dy^T [O, M] @ cols [M, KH*KW*C], cols the usual NHWC im2col; result transposed."""
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  return _dyt_cols(xp, dy, kernel_shape).T.reshape(kernel_shape).astype(dtype)


def shift_t(x, dy, kernel_shape, padding: Padding, dtype):
  """KH*KW products, one per tap: shifted channel-major x [C, M] @ dy [M, O], no big im2col buffer."""
  _, _, c, o = kernel_shape
  _, ho, wo, _ = dy.shape
  xt = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0)) + tuple(padding))
  d = dy.reshape(-1, o)
  gs = [jnp.dot(xt[:, :, i:i + ho, j:j + wo].reshape(c, -1), d, preferred_element_type=jnp.float32)
        for i, j in _taps(kernel_shape)]
  return jnp.stack(gs).reshape(kernel_shape).astype(dtype)


def band(x, dy, kernel_shape, padding: Padding, dtype, rows: int):
  """`im2col` over bands of `rows` output rows, summed in a loop. The whole-batch im2col buffer
  (0.9 GB for VGG16's first block at 224 px, batch 8) makes one big product memory-bound; a band's
  block stays in cache: 1.2-2.4x the other forms on VGG16's blocks 1-4 at 224 px (2-core AMD EPYC).
  (The same banding for the forward pass lost to XLA's conv inside the training step.)"""
  kh, kw, c, o = kernel_shape
  ho = dy.shape[1]
  nb = -(-ho // rows)
  extra = nb * rows - ho  # zero output-gradient rows contribute nothing
  dy = jnp.pad(dy, ((0, 0), (0, extra), (0, 0), (0, 0)))
  (top, bottom), cols_pad = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom + extra), tuple(cols_pad), (0, 0)))

  def one_band(acc, b):
    xs = lax.dynamic_slice_in_dim(xp, b * rows, rows + kh - 1, axis=1)
    d = lax.dynamic_slice_in_dim(dy, b * rows, rows, axis=1)
    return acc + _dyt_cols(xs, d, kernel_shape), None

  g, _ = lax.scan(one_band, jnp.zeros((o, kh * kw * c), jnp.float32), jnp.arange(nb))
  return g.T.reshape(kernel_shape).astype(dtype)


FORMULATIONS: dict[str, Callable] = {
    "xla": xla,
    "im2col_t": im2col_t,
    "im2col": im2col,
    "shift_t": shift_t,
    **{f"band{r}": functools.partial(band, rows=r) for r in (2, 4, 8)},
    # Winograd's adjoint: 2.25x / 4x fewer multiplications, 3x3 float32 only (`winograd`).
    **winograd.formulations(winograd.weight_grad),
    # bfloat16 on AMX tiles / AVX512-BF16's vector units, where `amx.covers`
    **{units: functools.partial(amx.weight_grad, units=units) for units in amx.NAMES},
    # Winograd F(2x2)'s adjoint in native code, products on AVX512-BF16's vector units / the AMX
    # tiles
    **{name: functools.partial(amx.winograd_weight_grad, units=units)
       for name, units in amx.WINOGRAD.items()},
}


def weight_and_bias_grad(name: str, x, dy, kernel_shape, padding: Padding, dtype, bias_dtype=None,
                         mask=None):
  """(dw by formulation `name`, db = the sum of dy over (N, H, W) in float32, cast to `bias_dtype`;
  None without a bias). The AMX formulation sums db on its own pass over dy. With `mask` (the
  layer's ReLU output), dy counts only where mask > 0: the AMX kernel masks dy as it reads it, the
  others get `jnp.where(mask > 0, dy, 0)` first."""
  if name in amx.NATIVE:
    grads = (functools.partial(amx.winograd_weight_and_bias_grad, units=amx.WINOGRAD[name])
             if name in amx.WINOGRAD else functools.partial(amx.weight_and_bias_grad, units=name))
    dw, db = grads(x, dy, kernel_shape, padding, dtype, bias_dtype or dtype, mask=mask)
    return dw, None if bias_dtype is None else db
  dy = amx.relu_masked(dy, mask)
  dw = FORMULATIONS[name](x, dy, kernel_shape, padding, dtype)
  if bias_dtype is None:
    return dw, None
  return dw, jnp.sum(dy, axis=(0, 1, 2), dtype=jnp.float32).astype(bias_dtype)


def rule(x_shape, kernel_shape, dtype) -> str:
  """A fixed choice when measuring is off. float32 3x3 layers with 128+ input channels on maps of
  14 x 14 to 112 x 112: Winograd (1.5-2.8x the best other form on VGG16's blocks 2-5 at 224 px, batch 8,
  2-core AMD EPYC). Otherwise large images (56 x 56 and up): bands of 4 rows (1.5-2.4x the im2col
  forms on blocks 1-3); else the transposed im2col, except for very wide layers where the
  [KH*KW*C, M] buffer gets large relative to the work and the dy^T form did better in probes.
  bfloat16 (`winograd.product_dtype`): the same, and F(4x4) also on larger maps from 64 channels
  where the CPU has bf16 units (`winograd.pays_large_bf16`); on AMX, the transposed im2col for
  layers with under 64 input channels (a [27, M] buffer: 44 ms vs band4's 114 ms for VGG16's first
  conv at 224 px, batch 8). Before all of these (`amx.native_rule`), bfloat16 layers the AMX tiles
  cover (`amx.covers`) take them; on AVX512-BF16 without AMX, the native Winograd F(2x2) its 3x3
  layers with 32-channel multiples and 128+ tiles (`amx.winograd_rule`: 1.3-2.1x the best other form
  on VGG16's), then the vector units every layer they cover (`amx.vector_rule`: 1.2-3.5x the best
  other form on VGG16's 56-224 px maps and first layer) but the 3x3 ones with 128+ channels on 8-32
  px maps: there F(4x4) where the map is a whole number of its 4 x 4 tiles from 16 px, else F(2x2)
  (1.05x the vector units at 28 px, 1.5x at 16, 2x at 8; at 32 px about even, run to run;
  benchmarks/results/conv_layers_{224,128}_bf16_epyc_avx512bf16.md)."""
  native, hw = amx.native_rule(x_shape, kernel_shape, dtype), x_shape[1] * x_shape[2]
  if native == amx.VECTOR_NAME and winograd.pays(x_shape, kernel_shape, dtype, largest=32,
                                                  smallest=8):
    whole = x_shape[1] % 4 == 0 and x_shape[2] % 4 == 0
    return "wino4" if whole and hw >= 16 * 16 else "wino2"
  if native:
    return native
  if winograd.pays(x_shape, kernel_shape, dtype, largest=112):
    return "wino4_c2" if hw >= 56 * 56 else "wino4" if hw >= 28 * 28 else "wino2"
  if winograd.pays_large_bf16(x_shape, kernel_shape, dtype):
    return "wino4_c2"
  if (kernel_shape[2] < 64 and jnp.dtype(dtype) == jnp.bfloat16 and winograd.amx_units()):
    return "im2col_t"   # VGG16's first conv (3 channels) on AMX in bf16: 2.6x band4
  if hw >= 56 * 56:
    return "band4"
  return "im2col" if kernel_shape[2] >= 512 else "im2col_t"
