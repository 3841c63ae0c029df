"""A convolution with XLA's forward and input gradient and a faster weight gradient."""

from __future__ import annotations

import functools

import jax
from jax import lax

from cxr_jax.ops import tuning, wgrad

_DN = ("NHWC", "HWIO", "NHWC")


def explicit_padding(x_shape, kernel_shape, padding) -> tuple[tuple[int, int], ...]:
  """(low, high) pairs for the two spatial dims of a stride-1 conv ("SAME", "VALID" or pairs)."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], (1, 1), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _plain(x, w, padding):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, padding: tuple[tuple[int, int], ...], wgrad_impl: str = "auto"):
  """Stride-1 NHWC x HWIO convolution; forward identical to lax.conv_general_dilated.

  Args:
    x: [N, H, W, C].
    w: [KH, KW, C, O].
    padding: ((low, high), (low, high)) explicit spatial padding (see `explicit_padding`).
    wgrad_impl: a name in `wgrad.FORMULATIONS`, "auto" (measured and cached per shape, see
      `tuning`) or "rule" (fixed rule, no measuring).
  """
  _check(wgrad_impl)
  return _plain(x, w, padding)


def _fwd(x, w, padding, wgrad_impl):
  _check(wgrad_impl)
  return _plain(x, w, padding), (x, w)


def _bwd(padding, wgrad_impl, res, dy):
  x, w = res
  # The input gradient stays XLA's transposed convolution: it runs as fast as the forward pass.
  _, vjp_x = jax.vjp(lambda x_: _plain(x_, w, padding), x)
  (dx,) = vjp_x(dy)
  name = resolve(wgrad_impl, x.shape, w.shape, padding, x.dtype)
  dw = wgrad.FORMULATIONS[name](x, dy, w.shape, padding, w.dtype)
  return dx, dw


conv2d.defvjp(_fwd, _bwd)


def _check(wgrad_impl: str) -> None:
  """Fails at trace time of the forward pass, not only once a gradient is taken."""
  if wgrad_impl not in ("auto", "rule") and wgrad_impl not in wgrad.FORMULATIONS:
    raise ValueError(f"unknown weight-gradient formulation {wgrad_impl!r}; use 'auto', 'rule' or "
                     f"one of {sorted(wgrad.FORMULATIONS)}")


def resolve(wgrad_impl: str, x_shape, kernel_shape, padding, dtype) -> str:
  """The concrete formulation name for `wgrad_impl` at these shapes."""
  _check(wgrad_impl)
  if wgrad_impl == "auto":
    return tuning.choose(x_shape, kernel_shape, padding, dtype)
  if wgrad_impl == "rule":
    return wgrad.rule(x_shape, kernel_shape)
  return wgrad_impl
