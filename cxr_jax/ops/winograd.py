"""Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2016) for a stride-1 3x3 convolution.

The input is cut into overlapping (m+2)^2 tiles (stride m); input tiles (B^T d B) and kernel
(G g G^T) are transformed by small constant matrices, and the convolution becomes (m+2)^2
independent [tiles, C] @ [C, O] products, followed by the output transform (A^T y A) back to m x m
outputs per tile: 2.25x (m=2) or 4x (m=4) fewer multiplications than the direct form. On a CPU
whose direct convolution already runs at the matmul peak (XLA's float32 conv does on the 2-core
AMD EPYC this was built on) it is the only way left to go faster. The transforms cost memory
traffic, so they pay where channels are wide and maps small (VGG16's blocks 3-5); which layers use
them is measured (`tuning`).

The weight gradient is the adjoint of the same computation: dU = V^T dM per tile position, with dM
the output gradient through A^T's transpose, then dW = G^T dU G.

In float32 the error is ~1e-5 of the output's scale for m=4 and ~1e-6 for m=2 (direct: ~1e-7).

bfloat16 inputs (model dtype bfloat16): the transforms always run in float32 (the inputs are
upcast inside their fusions, so no extra pass over memory), and only the products' operands are
rounded (`product_dtype`): to bfloat16 for F(2x2, 3x3), whose transforms have coefficients 0, +-1,
+-1/2, so rounding V and U adds one bfloat16 rounding (2^-9 relative) of values at most 4x / 2.25x
the input's, as the direct bfloat16 product rounds x and w; F(4x4, 3x3)'s transforms (5, 8, 1/24)
amplify that rounding ~100x, so its products stay float32 (at float32's speed, on bfloat16 data).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cxr_jax import machine

Padding = Sequence[tuple[int, int]]

# m -> (B^T, G, A^T) of F(m x m, 3 x 3).
MATRICES = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}


# Formulation name -> (m, images per loop step; 0 = the whole batch at once).
VARIANTS = {"wino2": (2, 0), "wino2_c2": (2, 2), "wino4": (4, 0), "wino4_c2": (4, 2)}


def applicable(kernel_shape, dtype) -> bool:
  return tuple(kernel_shape[:2]) == (3, 3) and jnp.dtype(dtype) in (jnp.float32, jnp.bfloat16)


def product_dtype(dtype, m: int):
  """The dtype the (m+2)^2 products take their operands in for inputs of `dtype` (module doc):
  bfloat16 only for F(2x2) on a CPU with bf16 units (elsewhere XLA emulates bf16 products,
  several times slower than float32's)."""
  return jnp.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 and m == 2 and bf16_units() else jnp.float32


def bf16_units() -> bool:
  """Whether bfloat16 products run on hardware (GPU/TPU, or a CPU with avx512_bf16 / amx_bf16)."""
  return jax.default_backend() != "cpu" or machine.native_bf16()


def amx_units() -> bool:
  """Whether bfloat16 products run several times faster than float32 ones: a CPU with AMX
  (2-core Xeon: XLA's bf16 dot 0.7-1.4 TFLOP/s, 3-5x its float32; AVX512-BF16 alone ~2x). There
  F(4x4)'s float32 products cost more than F(2x2)'s 1.8x more bf16 ones."""
  return jax.default_backend() == "cpu" and machine.isa_level() == "amx"


def covers(name: str, kernel_shape, dtype) -> bool:
  """Whether formulation `name` (of `fwd` or `wgrad`) computes this convolution: the Winograd
  ones only where `applicable`, every other one always."""
  return name not in VARIANTS or applicable(kernel_shape, dtype)


def formulations(fn) -> dict:
  """{name: fn with that variant's m and chunk} for `forward` or `weight_grad`."""
  return {name: functools.partial(fn, m=m, chunk=chunk) for name, (m, chunk) in VARIANTS.items()}


def pays(x_shape, kernel_shape, dtype, largest: int, smallest: int = 14) -> bool:
  """The fixed rules' condition: float32 or bfloat16 3x3 layers with 128+ input channels on maps from
  `smallest` x `smallest` (in float32, smaller ones are mostly padding in the tiles) up to
  `largest` x `largest`."""
  hw = x_shape[1] * x_shape[2]
  return (applicable(kernel_shape, dtype) and kernel_shape[2] >= 128
          and smallest ** 2 <= hw <= largest ** 2)


def pays_large_bf16(x_shape, kernel_shape, dtype) -> bool:
  """The fixed rules' extra bfloat16 case, where the CPU has bf16 units: 3x3 layers with 64+ input
  channels on maps larger than 56 x 56 (VGG16's blocks 1-2 at 224 px), where XLA's bf16
  convolution runs at its float32 speed and F(2x2)'s bf16 products in chunks of 2 images did
  1.2x (224 px, 64 channels) / 1.8x (112 px, 128) its forward pass, F(4x4) 1.2x the banded weight
  gradient (2-core AMD EPYC, AVX512-BF16, shared machine)."""
  return (jnp.dtype(dtype) == jnp.bfloat16 and bf16_units() and applicable(kernel_shape, dtype)
          and kernel_shape[2] >= 64 and x_shape[1] * x_shape[2] > 56 * 56)


def _combine(matrix, parts: list) -> list:
  """[sum_i matrix[a][i] * parts[i] for each row a], parts a list of equally shaped arrays.

  Kept as lists of separate arrays on purpose: stacking the (m+2)^2 transformed tiles into one
  array, or writing the transforms as einsums, made XLA's CPU fusions 2-20x slower (probed on
  VGG16's 56 and 28 px layers)."""
  out = []
  for row in matrix:
    terms = [p if c == 1 else -p if c == -1 else p * np.float32(c)
             for c, p in zip(row, parts, strict=True) if c != 0]
    out.append(functools.reduce(operator.add, terms))
  return out


def _transpose(matrix):
  return tuple(zip(*matrix, strict=True))


def _tiling(x_shape, padding: Padding, m: int):
  """Output size (ho, wo) and tile counts (th, tw) of a 3x3 stride-1 conv."""
  (top, bottom), (left, right) = padding
  ho, wo = x_shape[1] + top + bottom - 2, x_shape[2] + left + right - 2
  return ho, wo, -(-ho // m), -(-wo // m)


def _input_tiles(x, padding: Padding, m: int) -> list:
  """B^T d B of every tile: (m+2)^2 arrays [N, th, tw, C], row-major over the tile position."""
  bt = MATRICES[m][0]
  a = len(bt)
  n, h, w, c = x.shape
  (top, _), (left, _) = padding
  _, _, th, tw = _tiling(x.shape, padding, m)
  nbh, nbw = th + -(-(a - m) // m), tw + -(-(a - m) // m)  # m-row blocks the tiles touch
  # Zeros past the requested bottom/right padding only feed outputs that are cropped.
  xp = jnp.pad(x.astype(jnp.float32),
               ((0, 0), (top, nbh * m - h - top), (left, nbw * m - w - left), (0, 0)))
  xp = xp.reshape(n, nbh, m, nbw, m, c)  # tile row i of tile t is block t + i // m, offset i % m
  v = []
  for r in _combine(bt, [xp[:, i // m:i // m + th, i % m] for i in range(a)]):
    v += _combine(bt, [r[:, :, j // m:j // m + tw, j % m] for j in range(a)])
  return v


def _batches(n: int, chunk: int) -> int:
  """Images per step of a chunked formulation: `chunk` where it divides the batch, else 1."""
  return chunk if n % chunk == 0 else 1


def _kernel_tiles(w, m: int) -> list:
  """G w G^T at every tile position: (m+2)^2 arrays [C, O] in the products' dtype."""
  g = MATRICES[m][1]
  dt = product_dtype(w.dtype, m)
  return [q.astype(dt) for r in _combine(g, list(w.astype(jnp.float32))) for q in _combine(g, list(r))]


def _forward(x, u: list, padding: Padding, m: int):
  at = MATRICES[m][2]
  a = len(at[0])
  n, _, _, c = x.shape
  o = u[0].shape[1]
  ho, wo, th, tw = _tiling(x.shape, padding, m)
  v = _input_tiles(x, padding, m)
  prod = [jnp.dot(vk.reshape(-1, c).astype(uk.dtype), uk,
                  preferred_element_type=jnp.float32).reshape(n, th, tw, o)
          for vk, uk in zip(v, u, strict=True)]
  cols = [_combine(at, prod[j::a]) for j in range(a)]  # cols[j][p]: A^T over the tile rows
  y = [_combine(at, [col[p] for col in cols]) for p in range(m)]  # y[p][q]: then over columns
  y = jnp.stack([jnp.stack(yp, axis=3) for yp in y], axis=2).reshape(n, th * m, tw * m, o)
  return y[:, :ho, :wo].astype(x.dtype)


def forward(x, w, padding: Padding, m: int, chunk: int = 0):
  """x [N, H, W, C] * w [3, 3, C, O] -> [N, H', W', O] in x.dtype (float32 products).

  chunk > 0 runs `chunk` images at a time in a loop: on large maps the transformed tiles of the
  whole batch fall out of cache (VGG16 at 112 px, batch 8: 1.2x faster in chunks of 2)."""
  u = _kernel_tiles(w, m)
  if not chunk:
    return _forward(x, u, padding, m)
  n = x.shape[0]
  k = _batches(n, chunk)
  y = lax.map(lambda xs: _forward(xs, u, padding, m), x.reshape(n // k, k, *x.shape[1:]))
  return y.reshape(n, *y.shape[2:])


def _kernel_grads(x, dy, padding: Padding, m: int) -> list:
  """dU = V^T dM at every tile position: (m+2)^2 arrays [C, O] (float32)."""
  at = MATRICES[m][2]
  n, _, _, c = x.shape
  o = dy.shape[3]
  ho, wo, th, tw = _tiling(x.shape, padding, m)
  v = _input_tiles(x, padding, m)
  dt = product_dtype(x.dtype, m)
  dyp = jnp.pad(dy.astype(jnp.float32), ((0, 0), (0, th * m - ho), (0, tw * m - wo), (0, 0))).reshape(n, th, m, tw, m, o)
  a_t = _transpose(at)  # [a][p]
  dm = [q for r in _combine(a_t, [dyp[:, :, p] for p in range(m)])
        for q in _combine(a_t, [r[:, :, :, q] for q in range(m)])]  # row-major (a, b), [N, th, tw, O]
  return [lax.dot_general(vk.reshape(-1, c).astype(dt), dmk.reshape(-1, o).astype(dt),
                          (((0,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
          for dmk, vk in zip(dm, v, strict=True)]


def weight_grad(x, dy, kernel_shape, padding: Padding, dtype, m: int, chunk: int = 0):
  """dW [3, 3, C, O] of `forward` for output gradient dy [N, H', W', O] (the adjoint, in float32).

  Everything stays in NHWC order: the products contract the tiles axis of V [tiles, C] and
  dM [tiles, O] directly. (Unlike `wgrad`'s im2col products, moving channels first here, for
  the dy^T @ cols form, cost 3-5x: the transposes fuse into the transforms as strided reads.)
  chunk > 0 sums dU over `chunk` images at a time in a loop (1.3-1.9x on VGG16's 224-56 px
  layers, batch 8, chunks of 2)."""
  g = MATRICES[m][1]
  a = len(g)
  if not chunk:
    du = _kernel_grads(x, dy, padding, m)
  else:
    n = x.shape[0]
    k = _batches(n, chunk)

    def add(acc, xd):
      return [s + t for s, t in zip(acc, _kernel_grads(*xd, padding, m), strict=True)], None

    zeros = [jnp.zeros(kernel_shape[2:], jnp.float32)] * (a * a)
    du, _ = lax.scan(add, zeros, (x.reshape(n // k, k, *x.shape[1:]),
                                  dy.reshape(n // k, k, *dy.shape[1:])))
  g_t = _transpose(g)  # [3][a]
  rows = [_combine(g_t, du[b::a]) for b in range(a)]  # rows[b][i]: G^T over the tile rows
  dw = [_combine(g_t, [r[i] for r in rows]) for i in range(3)]  # dw[i][j], then over columns
  return jnp.stack([jnp.stack(di) for di in dw]).astype(dtype)
