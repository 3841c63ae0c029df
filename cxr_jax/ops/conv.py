"""A stride-1 convolution whose forward, input gradient and weight gradient each use the fastest
formulation for their shapes (XLA's own convolution or matrix products)."""

from __future__ import annotations

import functools

import jax
from jax import lax

from cxr_jax.ops import amx, fwd, tuning, wgrad

CHOICES = ("auto", "rule")  # besides the formulation names themselves


def explicit_padding(x_shape, kernel_shape, padding) -> tuple[tuple[int, int], ...]:
  """(low, high) pairs for the two spatial dims of a stride-1 conv ("SAME", "VALID" or pairs)."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], (1, 1), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _check(op: str, impl: str) -> None:
  """Fails when the forward pass is traced, not only once a gradient is taken."""
  if impl not in CHOICES and impl not in tuning.OPS[op]:
    raise ValueError(f"unknown {op} formulation {impl!r}; use one of "
                     f"{list(CHOICES) + sorted(tuning.OPS[op])}")


def resolve(op: str, impl: str, x_shape, kernel_shape, padding, dtype) -> str:
  """The concrete formulation name of `op` for `impl` ("auto", "rule" or a name) at these shapes."""
  _check(op, impl)
  if impl == "auto":
    return tuning.choose(x_shape, kernel_shape, padding, dtype, op=op)
  if impl == "rule":
    return tuning.rule(op, x_shape, kernel_shape, dtype)
  if impl not in tuning.applicable(op, kernel_shape, dtype):
    # A named formulation (fwd_wino4, ...) covers the convolutions it can compute.
    return tuning.rule(op, x_shape, kernel_shape, dtype)
  return impl


def _forward(x, w, bias, padding, fwd_impl, relu):
  name = resolve("fwd", fwd_impl, x.shape, w.shape, padding, x.dtype)
  return fwd.with_epilogue(name, x, w, padding, bias, relu)


def conv2d(x, w, padding: tuple[tuple[int, int], ...], wgrad_impl: str = "auto",
           fwd_impl: str = "xla", bias=None, relu: bool = False):
  """Stride-1 NHWC x HWIO convolution with selectable formulations, plus `bias` if given, then
  the ReLU with `relu`.

  Args:
    x: [N, H, W, C].
    w: [KH, KW, C, O], same dtype as x.
    padding: ((low, high), (low, high)) explicit spatial padding (see `explicit_padding`).
    wgrad_impl: weight gradient: a name in `wgrad.FORMULATIONS`, "auto" (measured and cached per
      shape, see `tuning`) or "rule" (fixed rule, no measuring).
    fwd_impl: forward pass and input gradient (the input gradient is the forward formulation
      applied to dy and the flipped kernel): "xla" (= lax.conv_general_dilated, bit-identical to
      flax's Conv), "rows", "auto" or "rule".
    bias: [O] in x's dtype, added as flax's Conv adds it; its gradient comes with the weight
      gradient (`wgrad.weight_and_bias_grad`): left to XLA, the sum of dy fused with dy's producers
      into a reduce-window that took 9-20 % of a bfloat16 training step.
    relu: max(0, .) of the result, the layer's activation: the AMX formulation applies bias and
      ReLU to its float32 sums (`fwd.with_epilogue`), where XLA's bias and ReLU passes (alone or
      fused into the pooling) took a quarter of a bfloat16 forward pass's op time; its gradient
      (0 where the output is 0, as nn.relu's) is applied to dy in the backward pass, by the AMX
      kernels as they read dy (left to XLA, a pass over each layer's dy: 5 % of a bf16 step).
  """
  _check("wgrad", wgrad_impl)
  return _conv2d(x, w, bias, padding, wgrad_impl, fwd_impl, relu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv2d(x, w, bias, padding, wgrad_impl, fwd_impl, relu):
  return _forward(x, w, bias, padding, fwd_impl, relu)


def _fwd(x, w, bias, padding, wgrad_impl, fwd_impl, relu):
  y = _forward(x, w, bias, padding, fwd_impl, relu)
  return y, (x, w, bias, y if relu else None)


def _input_grad(x, w, dy, padding, fwd_impl, mask):
  """dx is the convolution of dy (where mask > 0, with a mask) with the flipped, in/out-swapped
  kernel: the forward problem of other shapes, so it gets its own choice of formulation."""
  t_pads = fwd.transposed_padding(w.shape, padding)
  t_shape = w.shape[:2] + (w.shape[3], w.shape[2])
  name = "xla" if t_pads is None else resolve("fwd", fwd_impl, dy.shape, t_shape, t_pads, dy.dtype)
  if name == "xla":
    # XLA's own transposed convolution: as fast as its forward pass.
    _, vjp_x = jax.vjp(lambda x_: fwd.xla(x_, w, padding), x)
    return vjp_x(amx.relu_masked(dy, mask))[0]
  return fwd.on_transposed_kernel(name, dy, w, t_pads, mask=mask)


def _bwd(padding, wgrad_impl, fwd_impl, relu, res, dy):
  # With relu, y is the ReLU's output and dy counts where y > 0 (nn.relu's gradient): each
  # formulation masks it as it reads it (the AMX kernels) or XLA does first (the others; one
  # jnp.where for both, which XLA drops where dx is not needed).
  x, w, bias, y = res
  dx = _input_grad(x, w, dy, padding, fwd_impl, y)
  name = resolve("wgrad", wgrad_impl, x.shape, w.shape, padding, x.dtype)
  dw, db = wgrad.weight_and_bias_grad(name, x, dy, w.shape, padding, w.dtype,
                                      None if bias is None else bias.dtype, mask=y)
  return dx, dw, db


_conv2d.defvjp(_fwd, _bwd)
