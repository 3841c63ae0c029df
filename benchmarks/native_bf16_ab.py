"""A bfloat16 training step with and without the native convolution library (cxr_jax/ops/amx.py),
for an architecture `benchmarks/vs_pytorch.py` does not cover (DenseNet121).

  python benchmarks/native_bf16_ab.py --arch densenet121 --image-size 224 --trainable-blocks 5 \
      --out benchmarks/results/native_bf16_ab_densenet121_224_epyc_avx512bf16.json

Two processes, the same model (random weights, `config.model.arch`, the GAP head, bf16 compute,
conv_impl auto), one with the library and one with CXR_JAX_AMX=0 (the rules without it, as
before it existed); each times the gradient of the cross-entropy of one random batch (not the
trainer's step: no optimiser, no frozen-block masking) in alternating rounds, so load from other
processes hits both alike (`benchmarks/vs_pytorch.py`'s `Worker`, `serve` and `alternate`), under
the config's host allocator as launch.py sets it. JSON with the machine: seconds per step per
round, medians, ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.vs_pytorch import Worker, alternate, serve  # noqa: E402

VARIANTS = {"native": {}, "without_native": {"CXR_JAX_AMX": "0"}}  # name -> environment


def worker(arch: str, size: int, batch: int, trainable_blocks: int) -> None:
  from configs import default
  from cxr_jax import host_memory

  host_memory.configure(default.get_config().host_memory)  # before JAX's threads, as launch.py
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from cxr_jax import models

  cfg = default.get_config().model
  cfg.arch, cfg.head, cfg.pretrained, cfg.trainable_blocks = arch, "gap", "none", trainable_blocks
  model = models.create_model(cfg, dtype=jnp.bfloat16)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(batch, size, size, 3), jnp.float32)
  y = jnp.asarray(rng.randint(0, cfg.num_classes, batch))
  variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    logits, _ = model.apply({"params": p, **rest}, x, train=True, mutable=list(rest),
                            rngs={"dropout": jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

  grad = jax.jit(jax.grad(loss))

  def train_fn():
    jax.block_until_ready(grad(params))

  for _ in range(2):  # compile, then one more: the first timed round is still often slow
    train_fn()
  serve({"train": train_fn})


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--arch", default="densenet121")
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--trainable-blocks", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--out", type=Path)
  args = ap.parse_args(argv)
  if args.worker:
    worker(args.arch, args.image_size, args.batch, args.trainable_blocks)
    return 0

  from benchmarks import machine

  cmd = [sys.executable, __file__, "--worker", "--arch", args.arch, "--image-size",
         str(args.image_size), "--batch", str(args.batch), "--trainable-blocks", str(args.trainable_blocks)]
  # Built one after another (compiling and warming up), then timed in alternating rounds.
  workers = {name: Worker(cmd, name, env) for name, env in VARIANTS.items()}
  try:
    res = alternate(workers, "train", args.rounds, args.steps)
  finally:
    for w in workers.values():
      w.close()
  median = res["median_s"]
  machine.report({
      "benchmark": "native_bf16_ab", "arch": args.arch, "image_size": args.image_size,
      "batch": args.batch, "trainable_blocks": args.trainable_blocks, "rounds": args.rounds,
      "machine": machine.describe(), "seconds_per_step": res["all_s"], "median_seconds": median,
      "images_per_s": {name: args.batch / s for name, s in median.items()},
      "native_speedup": median["without_native"] / median["native"],
      "loadavg": res["loadavg"], "date": time.strftime("%Y-%m-%dT%H:%M:%S")}, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
