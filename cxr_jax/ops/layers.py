"""Linen convolution layers that are `flax.linen.Conv` with a faster backward pass.

They subclass `nn.Conv` and only swap its `conv_general_dilated`, so construction, parameter
names and shapes (`kernel` HWIO, `bias`), initialisers, dtype promotion and the forward result are
Conv's own; ported weights load unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
from jax import lax

from cxr_jax.ops import conv, fwd, wgrad

_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _all_ones(v) -> bool:
  return v is None or all(int(s) == 1 for s in (v if isinstance(v, tuple | list) else (v,)))


def conv_general_dilated(lhs, rhs, window_strides, padding, *, wgrad_impl: str, fwd_impl: str,
                         lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated` that routes the case `conv.conv2d` covers (2-D NHWC/HWIO, stride 1,
  no dilation, one group, default precision) to it and everything else to lax unchanged."""
  dn = (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        if dimension_numbers is not None else None)
  covered = (lhs.ndim == 4 and dn == _NHWC and _all_ones(window_strides)
             and _all_ones(lhs_dilation) and _all_ones(rhs_dilation) and feature_group_count == 1
             and precision is None and not kwargs and lhs.dtype == rhs.dtype)
  if not covered:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)
  pads = conv.explicit_padding(lhs.shape, rhs.shape, padding)
  return conv.conv2d(lhs, rhs, pads, wgrad_impl, fwd_impl)


@functools.cache
def _conv_class(fwd_impl: str, wgrad_impl: str) -> type[nn.Module]:
  fn = functools.partial(conv_general_dilated, wgrad_impl=wgrad_impl, fwd_impl=fwd_impl)
  return type(f"FastConv_{fwd_impl}_{wgrad_impl}", (nn.Conv,), {
      "__annotations__": {"conv_general_dilated": Callable},
      "conv_general_dilated": fn,
      "__doc__": (f"nn.Conv with forward/input-gradient formulation {fwd_impl!r} and weight-gradient "
                  f"formulation {wgrad_impl!r} (cxr_jax.ops)."),
      "__module__": __name__,
  })


# config.model.conv_impl -> (forward/input-gradient, weight-gradient) formulations; None = flax's
# own Conv. "auto" is measured per layer shape on first use and cached on disk; "rule" is a fixed
# choice without measuring (reproducible, e.g. for CI).
CONV_IMPLS: dict[str, tuple[str, str] | None] = {
    "xla": None,
    "fast": ("xla", "auto"),       # forward bit-identical to nn.Conv; weight gradient measured
    "fast_rule": ("xla", "rule"),
    "fast_mm": ("auto", "auto"),   # forward and input gradient measured too (Winograd in fp32)
    "fast_mm_rule": ("rule", "rule"),
    **{f"wgrad_{name}": ("xla", name) for name in wgrad.FORMULATIONS},
    **{f"fwd_{name}": (name, "rule") for name in fwd.FORMULATIONS},
}

FastConv = _conv_class(*CONV_IMPLS["fast"])

# config.model.conv_impl="auto" (the default), per JAX backend. CPU: the fixed rules, forward and
# both gradients (Winograd in float32 3x3 layers with 128+ channels on 14-56 px maps, else XLA's
# conv; ~1e-5 of each layer's output scale from XLA's result), with nothing to measure on first use:
# VGG16 training at 224 px 4x XLA's conv at FT5 on an AVX2-only EPYC, 2.2x on an AMX Xeon
# (benchmarks/results/vs_pytorch_224_xeon_amx_*.md). Other backends: XLA's own convolution (cuDNN, TPU), which these CPU formulations would slow.
AUTO = {"cpu": "fast_mm_rule"}


def resolve(conv_impl: str) -> str:
  """The concrete implementation `conv_impl` names on this process's default backend."""
  if conv_impl != "auto":
    return conv_impl
  import jax

  return AUTO.get(jax.default_backend(), "xla")


def conv_module(conv_impl: str) -> type[nn.Module]:
  """The linen conv class for `config.model.conv_impl`; constructible like `nn.Conv`."""
  conv_impl = resolve(conv_impl)
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"config.model.conv_impl={conv_impl!r} is not one of "
                     f"{sorted(CONV_IMPLS) + ['auto']}")
  impls = CONV_IMPLS[conv_impl]
  return nn.Conv if impls is None else _conv_class(*impls)
