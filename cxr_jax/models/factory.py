"""Builds the model a config asks for."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax import ops
from cxr_jax.models.densenet import DENSENET_LAYERS, STAGE_NAMES, DenseNet
from cxr_jax.models.plan import FineTuningPlan
from cxr_jax.models.vgg import BLOCK_NAMES, VGG

_VGG_DEPTHS = {"vgg16": 16, "vgg19": 19}
_DENSENET_DEPTHS = {f"densenet{d}": d for d in DENSENET_LAYERS}
ARCHS = tuple(_VGG_DEPTHS) + tuple(_DENSENET_DEPTHS)


def block_names(arch: str) -> tuple[str, ...]:
  """The five blocks of `arch` that the fine-tuning degree counts (see `plan.FineTuningPlan`)."""
  if arch not in ARCHS:
    raise ValueError(f"model.arch must be one of {list(ARCHS)}, got {arch!r}")
  return STAGE_NAMES if arch in _DENSENET_DEPTHS else BLOCK_NAMES


def fine_tuning_plan(model_config) -> FineTuningPlan:
  """The fine-tuning plan of `config.model` (fields arch, trainable_blocks): built here, beside the
  arch table, so that plan.py imports nothing of the package (no import circle)."""
  return FineTuningPlan(block_names(model_config.arch), int(model_config.trainable_blocks))


def create_model(model_config, dtype=None) -> nn.Module:
  """The module for `config.model` (fields arch, num_classes, head, hidden, dropout,
  trainable_blocks, conv_impl, pool_impl, dtype).

  `dtype` is the computation dtype (parameters stay float32); default `model_config.dtype`, else
  float32. bfloat16 runs the convolutions' matrix products on the CPU's bf16 units (AMX,
  AVX512-BF16; `cxr_jax.ops`); without them it is no faster than float32 and logs a warning.

  Fine-tuning degree FTk (`trainable_blocks=k`) trains the last k blocks: the model freezes the
  blocks of `fine_tuning_plan(model_config)`. For DenseNet121 the blocks are its five
  stages (see `densenet`); its head always global-average-pools, so `model.head` only applies to
  VGG.
  """
  if dtype is None:
    dtype = jnp.dtype(model_config.get("dtype", "float32"))
  if jnp.dtype(dtype) == jnp.bfloat16 and not ops.bf16_units():
    logging.warning("model dtype bfloat16 on a CPU without bf16 units (avx512_bf16, amx_bf16): "
                    "its products run in float32, about as fast as float32 (1.0-1.1x measured), "
                    "with bfloat16's rounding of the activations; use float32 here")
  arch = model_config.arch
  plan = fine_tuning_plan(model_config)   # refuses an unknown arch or k
  # Resolved here, in the process that runs the model ("auto" depends on its backend); a saved
  # config from before the field existed ran flax's Conv.
  conv_impl = ops.resolve(model_config.get("conv_impl", "xla"))
  if arch in _DENSENET_DEPTHS:
    return DenseNet(
        depth=_DENSENET_DEPTHS[arch],
        num_classes=int(model_config.num_classes),
        hidden=tuple(int(h) for h in model_config.hidden),
        dropout=float(model_config.dropout),
        frozen_blocks=len(plan.frozen),
        conv_impl=conv_impl,
        dtype=dtype,
    )
  return VGG(
      depth=_VGG_DEPTHS[arch],
      num_classes=int(model_config.num_classes),
      head=model_config.head,
      hidden=tuple(int(h) for h in model_config.hidden),
      dropout=float(model_config.dropout),
      frozen_blocks=len(plan.frozen),
      conv_impl=conv_impl,
      pool_impl=model_config.get("pool_impl", "fast"),
      dtype=dtype,
  )
