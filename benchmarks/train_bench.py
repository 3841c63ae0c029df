"""Training throughput of the project's own train step, and the quick-start run end to end.

  .venv/bin/python benchmarks/train_bench.py [--size 224] [--batch 8] [--steps 5] [--quickstart]

Images/s for VGG16 at fine-tuning degrees k = 0, 2, 5 (the pmapped step the trainer uses, RMSprop,
frozen blocks masked), each with and without the stop_gradient at the frozen boundary, so the saving
of not back-propagating into frozen blocks is measured rather than assumed. --quickstart also runs
`make train`'s config and records its wall time and test metrics. JSON to stdout and
benchmarks/results/train_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import machine  # noqa: E402
from configs import default  # noqa: E402
from cxr_jax import host_memory, models  # noqa: E402
from cxr_jax.train import optim  # noqa: E402
from cxr_jax.train.step import TrainState, make_pmapped_steps  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def step_throughput(k: int, size: int, batch: int, steps: int, stop_gradient: bool) -> dict:
  config = default.get_config()
  config.model.trainable_blocks = k
  model = models.create_model(config.model)
  if not stop_gradient:
    model = model.clone(frozen_blocks=0)   # freezing by the optimiser mask alone
  n = jax.local_device_count()
  x = jnp.zeros((1, size, size, 3))
  params = jax.jit(lambda r: model.init(r, x, train=False))(jax.random.PRNGKey(0))["params"]
  tx = optim.make_optimizer(params, models.fine_tuning_plan(config.model), config.train)
  plateau = optim.make_plateau(config.train)
  state = jax_utils.replicate(TrainState(jnp.asarray(0), params, tx.init(params),
                                         plateau.init({}), jax.random.PRNGKey(1)))
  p_train, _ = make_pmapped_steps(model, tx, 3)
  rng = np.random.default_rng(0)
  batch_data = {
      "image": rng.standard_normal((n, batch // n, size, size, 3), np.float32),
      "label": rng.integers(0, 3, (n, batch // n)).astype(np.int32),
      "weight": np.ones((n, batch // n), np.float32)}
  t0 = time.perf_counter()
  state, m = p_train(state, batch_data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = p_train(state, batch_data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  return {"trainable_blocks": k, "stop_gradient": stop_gradient, "size": size, "batch": batch,
          "first_step_s": round(compile_s, 2), "median_step_s": round(median, 3),
          "images_per_s": round(batch / median, 3)}


def quickstart() -> dict:
  workdir = tempfile.mkdtemp(prefix="quickstart_")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "launch.py", "--config=configs/quickstart.py",
                  f"--workdir={workdir}"], cwd=REPO, check=True)
  wall = time.perf_counter() - t0
  metrics = json.loads((Path(workdir) / "metrics.json").read_text())
  per_class = metrics.get("per_class", {})
  return {"wall_s": round(wall, 1), "workdir": workdir, "accuracy": metrics.get("accuracy"),
          "auc": {c: per_class[c].get("auc") for c in per_class},
          "sensitivity": {c: per_class[c].get("sensitivity") for c in per_class},
          "specificity": {c: per_class[c].get("specificity") for c in per_class}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--degrees", default="0,2,5")
  parser.add_argument("--quickstart", action="store_true")
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/train_bench.json"))
  args = parser.parse_args()
  host_memory.configure(default.get_config().host_memory)  # as launch.py does
  result = {"machine": machine.describe(), "steps": []}
  for k in (int(d) for d in args.degrees.split(",")):
    for stop_gradient in ((True, False) if k < 5 else (True,)):
      row = step_throughput(k, args.size, args.batch, args.steps, stop_gradient)
      print(json.dumps(row), file=sys.stderr, flush=True)
      result["steps"].append(row)
  if args.quickstart:
    result["quickstart"] = quickstart()
  result["load_average_after"] = list(os.getloadavg())
  machine.report(result, args.out)


if __name__ == "__main__":
  main()
