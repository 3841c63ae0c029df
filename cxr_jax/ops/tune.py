"""Measures (and caches) the per-layer formulation choices of a model ahead of training.

  python -m cxr_jax.ops.tune --config configs/default.py --image-size 224 --batch 8 \
      --conv-impl fast_mm --dtype bfloat16

Training measures the same choices on its first trace anyway; running this first keeps that
(minutes at 224 px on a small CPU) out of the first training step and prints what was chosen.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from cxr_jax import host_memory
from cxr_jax.ops import tuning


def tune(model_config, image_size: int, batch: int, dtype) -> dict:
  """Traces the model's training gradient at this size (every conv trainable), which makes every
  "auto" choice; returns the cache entries of this machine."""
  from cxr_jax import models

  mc = model_config.copy_and_resolve_references()
  mc.trainable_blocks = 5
  model = models.create_model(mc, dtype=dtype)
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1])["params"])

  def loss(p):
    return jnp.sum(model.apply({"params": p}, x, train=False))

  jax.jit(jax.grad(loss)).trace(params)
  return {k: v["choice"] for k, v in tuning._load().items()}


def main(argv=None):
  from configs import default

  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8, help="per-device batch")
  ap.add_argument("--arch", default="vgg16")
  ap.add_argument("--conv-impl", default="fast")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = ap.parse_args(argv)
  config = default.get_config()
  host_memory.configure(config.host_memory)  # measure under the allocator training runs with
  config.model.arch, config.model.conv_impl = args.arch, args.conv_impl
  print(json.dumps(tune(config.model, args.image_size, args.batch, jnp.dtype(args.dtype)), indent=1))


if __name__ == "__main__":
  main()
