"""Performance ops: a convolution whose weight gradient runs as fast matrix products on CPU.

`conv_module(config.model.conv_impl)` is the linen conv class a model should build its layers with
("xla" = flax's Conv; "fast" = same forward/input gradient, weight gradient measured per shape).
"""

from cxr_jax.ops.conv import conv2d, explicit_padding
from cxr_jax.ops.layers import CONV_IMPLS, FastConv, conv_module
from cxr_jax.ops.wgrad import FORMULATIONS

__all__ = ["CONV_IMPLS", "FORMULATIONS", "FastConv", "conv2d", "conv_module", "explicit_padding"]
