"""Performance ops: convolutions whose gradients run as fast matrix products on CPU.

`conv_module(config.model.conv_impl)` is the linen conv class a model builds its layers with; every
class is `flax.linen.Conv` (same constructor, params `kernel` HWIO / `bias`, same forward for "fast")
with another backward pass:

  auto          the default: fast_mm_rule on CPU, xla on GPU/TPU (`layers.AUTO`, `resolve`).
  xla           flax's Conv, XLA's gradients.
  fast          forward and input gradient XLA's; weight gradient as matrix products, formulation
                measured per layer shape on first use and cached (`tuning`): equal to XLA's to
                float32 rounding (im2col forms) or ~1e-5 of its scale (Winograd forms).
  fast_mm       also forward and input gradient measured between XLA's conv, one matrix product
                ("rows") and Winograd F(2x2,3x3) / F(4x4,3x3) ("wino2", "wino4", `winograd`:
                2.25x / 4x fewer multiplications, 3x3 only; float32 error ~1e-5 of the output's
                scale), and Winograd weight gradients among the others. In float32 the fastest
                path here. With bfloat16 compute (model dtype) the products use the CPU's bf16
                units (`bf16_units()`: avx512_bf16 or amx_bf16): the matrix-product forms and
                Winograd F(2x2) multiply bf16 operands with float32 accumulation, F(4x4) keeps
                float32 products on bf16 data (`winograd.product_dtype`).
  fast_rule, fast_mm_rule   the same without measuring (fixed rules).
  wgrad_<name>, fwd_<name>  one formulation everywhere (tests, benchmarks).

CXR_JAX_WGRAD_TUNE=0 turns measuring off everywhere (rules instead). Pre-measure a model with
`python -m cxr_jax.ops.tune`.

`pool.max_pool` is VGG's 2x2 max-pool with an elementwise gradient (bit-identical to flax's;
`config.model.pool_impl`).
"""

from cxr_jax.ops.conv import conv2d, explicit_padding
from cxr_jax.ops.layers import CONV_IMPLS, FastConv, conv_module, fuses_relu, resolve
from cxr_jax.ops.winograd import bf16_units

__all__ = ["CONV_IMPLS", "FastConv", "bf16_units", "conv2d", "conv_module", "explicit_padding",
           "fuses_relu", "resolve"]
