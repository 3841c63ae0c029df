"""Measures (and caches) the per-layer formulation choices of a config's model ahead of training.

  python -m cxr_jax.ops.tune --config=configs/quickstart.py --config.model.conv_impl=fast_mm
  python -m cxr_jax.ops.tune --config.model.conv_impl=fast --config.data.image_size=224 \\
      --config.train.batch_size=8 --config.model.dtype=bfloat16

The configuration is taken as launch.py takes it (cxr_jax.cli): --config=FILE (default the
package's, cxr_jax/config.py) and --config.a.b=value overrides. What is measured is what training
with that config measures on its first trace: model.arch, model.conv_impl and model.dtype at
data.image_size, the per-device share of train.batch_size, every conv trainable. Only conv_impl
fast and fast_mm measure (the default, auto, is a fixed rule on CPU: nothing to measure).
Running this first keeps that (minutes at 224 px on a small CPU) out of the first training step
and prints what was chosen.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp

from cxr_jax import cli, host_memory
from cxr_jax.ops import layers, tuning


def tune(model_config, image_size: int, batch: int, dtype=None) -> dict:
  """Traces the model's training gradient at this size (every conv trainable), which makes every
  "auto" choice; returns the cache entries of this machine. dtype: default model_config.dtype."""
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


def measures(conv_impl: str) -> bool:
  """Whether `config.model.conv_impl` measures anything on this backend."""
  return "auto" in (layers.CONV_IMPLS.get(layers.resolve(conv_impl)) or ())


def main(argv=None) -> int:
  config = cli.parse(sys.argv[1:] if argv is None else argv, prog="python -m cxr_jax.ops.tune",
                     doc=__doc__).config
  host_memory.configure(config.host_memory)  # measure under the allocator training runs with
  if not measures(config.model.conv_impl):
    print(f"config.model.conv_impl={config.model.conv_impl!r} measures nothing on "
          f"{jax.default_backend()} (set --config.model.conv_impl=fast or fast_mm)", file=sys.stderr)
  batch = max(1, config.train.batch_size // jax.device_count())  # as the trainer splits it
  print(json.dumps(tune(config.model, config.data.image_size, batch), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
