"""Performance ops: convolutions whose gradients run as fast matrix products on CPU.

`conv_module(config.model.conv_impl)` is the linen conv class a model builds its layers with; every
class is `flax.linen.Conv` (same constructor, params `kernel` HWIO / `bias`, same forward for "fast")
with another backward pass:

  xla           flax's Conv, XLA's gradients.
  fast          forward and input gradient XLA's; weight gradient as matrix products, formulation
                measured per layer shape on first use and cached (`tuning`). Same numerics as xla
                to float32 rounding.
  fast_mm       also forward and input gradient measured between XLA's conv and one matrix
                product ("rows"); with bfloat16 compute (model dtype) the products use the CPU's
                bf16 units (AMX, AVX512-BF16).
  fast_rule, fast_mm_rule   the same without measuring (fixed rules).
  wgrad_<name>, fwd_<name>  one formulation everywhere (tests, benchmarks).

CXR_JAX_WGRAD_TUNE=0 turns measuring off everywhere (rules instead). Pre-measure a model with
`python -m cxr_jax.ops.tune`.
"""

from cxr_jax.ops.conv import conv2d, explicit_padding
from cxr_jax.ops.layers import CONV_IMPLS, FastConv, conv_module

__all__ = ["CONV_IMPLS", "FastConv", "conv2d", "conv_module", "explicit_padding"]
