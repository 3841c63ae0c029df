"""Formulations of a stride-1 convolution's forward pass (also used for its input gradient).

XLA's CPU convolution (YNNPACK) runs bfloat16 no faster than float32, while XLA's bfloat16 dot with
float32 accumulation (`preferred_element_type=float32`, as every product here) uses the bf16 units:
AMX at several times the float32 rate, AVX512-BF16 at ~2x (2-core AMD EPYC: 2.1-2.3x on VGG16's
product shapes; a bf16 dot with bf16 output runs at float32's rate there). "rows" writes the
convolution as one matrix product: the KW horizontal taps of the padded input are concatenated along channels ([M', KW*C], M' counting
every padded row), multiplied by the kernel rearranged to [KW*C, KH*O], and the KH row-shifted
slices of the product are summed. It costs a KW-fold copy of the input and a KH-fold product
buffer, which pays off where channels are wide (and mostly in bfloat16).

"wino2" / "wino4": Winograd F(2x2, 3x3) / F(4x4, 3x3), see `winograd` (3x3 kernels; float32
transforms, bf16 products for F(2x2) on bfloat16 data). "wino2_avx512bf16": the same F(2x2) with
its transforms in native code and its products on AVX512-BF16's vector units (`amx.winograd_forward`).

Every function takes x [N, H, W, C], w [KH, KW, C, O] and (low, high) padding per spatial dim
and returns the [N, H', W', O] output in x.dtype, accumulating in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax

from cxr_jax.ops import amx, winograd

_DN = ("NHWC", "HWIO", "NHWC")
Padding = Sequence[tuple[int, int]]


def xla(x, w, padding: Padding):
  """lax.conv_general_dilated, exactly what flax's Conv computes."""
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)


def rows(x, w, padding: Padding):
  """One [M', KW*C] @ [KW*C, KH*O] product, then the sum of KH row-shifted slices."""
  n, _, _, c = x.shape
  kh, kw, _, o = w.shape
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  hp, wp = xp.shape[1:3]
  ho, wo = hp - kh + 1, wp - kw + 1
  xw = jnp.concatenate([xp[:, :, j:j + wo, :] for j in range(kw)], axis=-1)
  wr = w.transpose(1, 2, 0, 3).reshape(kw * c, kh * o)  # rows (j, c), columns (i, o)
  z = jnp.dot(xw.reshape(-1, kw * c), wr, preferred_element_type=jnp.float32)
  z = z.reshape(n, hp, wo, kh, o)
  return sum(z[:, i:i + ho, :, i, :] for i in range(kh)).astype(x.dtype)


FORMULATIONS: dict[str, Callable] = {
    "xla": xla,
    "rows": rows,
    **winograd.formulations(winograd.forward),
    # bfloat16 on AMX tiles / AVX512-BF16's vector units, where `amx.covers`
    **{units: functools.partial(amx.forward, units=units) for units in amx.NAMES},
    # Winograd F(2x2) with its transforms in the native code, on AVX512-BF16's vector units / the
    # AMX tiles
    **{name: functools.partial(amx.winograd_forward, units=units)
       for name, units in amx.WINOGRAD.items()},
}


def with_epilogue(name: str, x, w, padding: Padding, bias=None, relu: bool = False):
  """Formulation `name`, plus `bias` [O], then max(0, .) with `relu`: the AMX kernel (on either
  units) adds them to its float32 sums before rounding; the others' outputs get them from XLA, as
  flax's Conv and nn.relu would."""
  if name in amx.NAMES:
    return amx.forward(x, w, padding, bias=bias, relu=relu, units=name)
  if name in amx.WINOGRAD:
    return amx.winograd_forward(x, w, padding, bias=bias, relu=relu, units=amx.WINOGRAD[name])
  y = FORMULATIONS[name](x, w, padding)
  if bias is not None:
    y = y + bias.reshape((1, 1, 1, -1))
  return jnp.maximum(y, 0) if relu else y


def rule(x_shape, kernel_shape, dtype) -> str:
  """Fixed choice when measuring is off: Winograd for 3x3 layers with 128+ input channels on maps
  of 14 x 14 to 56 x 56 (float32: 1.4-2x XLA's conv on VGG16's blocks 3-5 at 224 px, 2-core AMD
  EPYC; bfloat16 where the CPU has bf16 units: F(2x2)'s bf16 products, in chunks of 2 images from
  28 px (AVX512-BF16 EPYC: 1.3-1.8x F(4x4)'s float32 products at 28-56 px, 3x at 14 px; AMX:
  1.5-2.2x, `winograd.amx_units`); and F(2x2) in chunks of 2 images on larger maps,
  `winograd.pays_large_bf16`); "rows" for other bfloat16 layers with wide channels where the CPU
  has bf16 units (XLA's own bf16 convolution runs at its float32 speed); else XLA's conv. Before all
  of these (`amx.native_rule`), bfloat16 layers the AMX tiles cover (`amx.covers`: every VGG16
  layer) take them; on AVX512-BF16 without AMX, the native Winograd F(2x2) its 3x3 layers with
  32-channel multiples and 128+ output tiles (`amx.winograd_rule`: 1.1-1.8x the best other form at
  batch 8 from 16 px), then the vector units every layer they cover (`amx.vector_rule`: 1.4-3.3x the
  other forms on VGG16's 64-224 px maps and first layer at batch 8; F(2x2) won some at batch 1) but
  the 3x3 ones with 128+ channels on 8-56 px maps, where F(2x2)'s bf16 products won (1.05-1.2x at 56
  px, 1.6x at 28, 2x at 8 px, below Winograd's float32 range:
  benchmarks/results/conv_layers_{224,128}_bf16_epyc_avx512bf16.md)."""
  native, hw = amx.native_rule(x_shape, kernel_shape, dtype), x_shape[1] * x_shape[2]
  if native == amx.VECTOR_NAME and winograd.pays(x_shape, kernel_shape, dtype, largest=56,
                                                  smallest=8):
    return "wino2_c2" if hw >= 28 * 28 else "wino2"
  if native:
    return native
  bf16 = jnp.dtype(dtype) == jnp.bfloat16 and winograd.bf16_units()
  if winograd.pays(x_shape, kernel_shape, dtype, largest=56):
    if bf16 and winograd.amx_units():
      # bf16 products: 1.5-2.2x F(4x4) at 28-56 px (benchmarks/results/bf16_layers_224_xeon_amx.md)
      return "wino2"
    if hw < 28 * 28:
      return "wino2"
    # AVX512-BF16: benchmarks/results/conv_layers_224_bf16_epyc_avx512bf16.md
    return "wino2_c2" if bf16 else "wino4"
  if winograd.pays_large_bf16(x_shape, kernel_shape, dtype):
    return "wino2_c2"
  return "rows" if bf16 and kernel_shape[2] >= 256 else "xla"


def transposed_padding(kernel_shape, padding: Padding):
  """Padding of the stride-1 convolution of dy with the flipped, in/out-swapped kernel that gives
  dx; None where the forward padding exceeds the kernel (then XLA's own transpose is used)."""
  pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_shape[:2], padding, strict=True))
  return None if any(p < 0 for pair in pads for p in pair) else pads


def transposed_kernel(w):
  return jnp.flip(w, (0, 1)).swapaxes(2, 3)


def on_transposed_kernel(name: str, dy, w, padding: Padding, mask=None):
  """Formulation `name` applied to dy and `transposed_kernel(w)` (the input gradient); the AMX
  kernel flips and swaps w as it packs it, so XLA never transposes it. With `mask` (the layer's
  ReLU output), dy counts only where mask > 0 (`amx.relu_masked`; the AMX kernel as it reads dy)."""
  if name in amx.NAMES and amx.flips(w.shape):
    return amx.forward(dy, w, padding, flip=True, mask=mask, units=name)
  if name in amx.WINOGRAD:
    return amx.winograd_forward(dy, w, padding, flip=True, mask=mask, units=amx.WINOGRAD[name])
  return FORMULATIONS[name](amx.relu_masked(dy, mask), transposed_kernel(w), padding)
