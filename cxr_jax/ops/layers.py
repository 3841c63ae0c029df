"""Linen convolution layers that are `flax.linen.Conv` with a faster backward pass.

They subclass `nn.Conv`: construction, parameter names and shapes (`kernel` HWIO, `bias`),
initialisers, dtype promotion and the forward result are Conv's own; ported weights load
unchanged. The convolutions `conv.conv2d` covers (2-D, stride 1, no dilation, one group, shared
weights, no mask, default precision, zero padding) go through it with the bias inside, so the bias
gradient comes with the weight gradient; every other configuration is Conv's own code.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
from flax.linen.linear import canonicalize_padding

from cxr_jax.ops import amx, conv, fwd, wgrad


def _all_ones(v) -> bool:
  return v is None or all(int(s) == 1 for s in (v if isinstance(v, tuple | list) else (v,)))


class _FastConv(nn.Conv):
  """nn.Conv through `conv.conv2d` where it covers the configuration (module doc); with `relu`,
  the layer's ReLU too (`fuses_relu`)."""
  impls: ClassVar[tuple[str, str]] = ("xla", "auto")  # (forward/input gradient, weight gradient)
  relu: bool = False  # nn.relu of the output, in the convolution's own epilogue where it has one

  def _covered(self, inputs):
    """(kernel size, explicit padding) of a call `conv.conv2d` covers, or None (then nn.Conv's
    own code runs)."""
    kernel_size = ((self.kernel_size,) * 2 if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    padding = canonicalize_padding(self.padding, len(kernel_size))
    covered = (inputs.ndim == 4 and len(kernel_size) == 2 and self.feature_group_count == 1
               and all(_all_ones(v) for v in (self.strides, self.input_dilation, self.kernel_dilation))
               and self.shared_weights and self.mask is None and self.precision is None
               and self.conv_general_dilated is None and self.conv_general_dilated_cls is None
               and padding not in ("CIRCULAR", "REFLECT", "CAUSAL"))
    if not covered:
      return None
    return kernel_size, conv.explicit_padding(inputs.shape, kernel_size, padding)

  @nn.compact
  def __call__(self, inputs):
    covered = self._covered(inputs)
    if covered is None:
      y = super().__call__(inputs)
      return nn.relu(y) if self.relu else y
    kernel_size, pads = covered
    kernel = self.param("kernel", self.kernel_init, kernel_size + (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    fwd_impl, wgrad_impl = self.impls
    return conv.conv2d(inputs, kernel, pads, wgrad_impl, fwd_impl, bias=bias, relu=self.relu)


def fuses_relu(conv_cls: type[nn.Module]) -> bool:
  """Whether `conv_cls(..., relu=True)` is the conv followed by nn.relu (flax's nn.Conv has no
  such field: apply nn.relu to its output)."""
  return issubclass(conv_cls, _FastConv)


@functools.cache
def _conv_class(fwd_impl: str, wgrad_impl: str) -> type[nn.Module]:
  return type(f"FastConv_{fwd_impl}_{wgrad_impl}", (_FastConv,), {
      "impls": (fwd_impl, wgrad_impl),
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
    # bfloat16 on AVX512-BF16's vector units in every layer they cover (`amx.VECTOR_NAME`), the
    # rules elsewhere (which take them on such CPUs without AMX where they measured faster).
    amx.VECTOR_NAME: (amx.VECTOR_NAME, amx.VECTOR_NAME),
    # Winograd F(2x2) with its products on the AMX tiles in every layer it covers, the rules
    # elsewhere: to run and measure it on an AMX CPU (not in the rules until then).
    amx.WINOGRAD_AMX_NAME: (amx.WINOGRAD_AMX_NAME, amx.WINOGRAD_AMX_NAME),
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
