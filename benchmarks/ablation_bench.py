"""Wall time of a small real ablation with and without the frozen-feature cache.

  .venv/bin/python benchmarks/ablation_bench.py [--size 64] [--epochs 3] [--degrees 0,1,2,3,4,5]

VGG16, fine-tuning degrees 0..5, one fold, real cxr3 images and ImageNet weights at a fixed small
size: the same `--mode=ablation` runner twice, once with config.train.feature_cache off and once on
(in a fresh feature folder, so computing the features is part of the cached time). Reports the
wall time per run and in total, the ratio, and whether both give the same test metrics. JSON to
stdout and benchmarks/results/ablation_bench.json, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import machine  # noqa: E402
from configs import ablation  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_config(args, cache: bool):
  c = ablation.get_config(f"size={args.size}")
  c.experiment.grid = f"model.trainable_blocks={args.degrees}"
  c.experiment.num_folds = 1
  c.model.pretrained = args.pretrained
  c.model.head = "gap"            # the same head at every size (the flatten head grows with it)
  c.data.balance = False
  c.train.batch_size = args.batch
  c.train.eval_batch_size = 32
  c.train.num_epochs = args.epochs
  c.train.steps_per_epoch = args.steps_per_epoch
  c.train.early_stopping_patience = args.epochs   # every run trains the same number of epochs
  c.eval.num_bootstrap = 100
  c.train.feature_cache = cache
  return c


def timed_ablation(config, workdir: Path) -> dict:
  from cxr_jax import experiments, train

  per_run = {}

  def timed_train(run_config, directory):
    t0 = time.perf_counter()
    out = train.train_and_evaluate(run_config, directory)
    per_run[Path(directory).name] = round(time.perf_counter() - t0, 1)
    return out

  t0 = time.perf_counter()
  doc = experiments.run_experiment(config, workdir, "ablation", train_fn=timed_train)
  wall = time.perf_counter() - t0
  covid = {name: g["summary"]["covid/accuracy"]["mean"] for name, g in doc["groups"].items()}
  accuracy = {name: g["summary"]["accuracy"]["mean"] for name, g in doc["groups"].items()}
  return {"wall_s": round(wall, 1), "per_run_s": per_run, "accuracy": accuracy,
          "covid_accuracy": covid, "workdir": str(workdir)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--steps_per_epoch", type=int, default=-1, help="-1 = full epochs")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--degrees", default="0,1,2,3,4,5")
  parser.add_argument("--pretrained", default="imagenet", choices=["imagenet", "none"])
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/ablation_bench.json"))
  args = parser.parse_args()
  root = Path(tempfile.mkdtemp(prefix="ablation_bench_"))
  os.environ["CXR_JAX_FEATURE_CACHE"] = str(root / "features")   # cold cache: its cost counts
  result = {"machine": machine.describe(), "settings": vars(args)}
  for name, cache in (("uncached", False), ("cached", True)):
    result[name] = timed_ablation(make_config(args, cache), root / name)
    print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
  result["ratio_uncached_over_cached"] = round(
      result["uncached"]["wall_s"] / result["cached"]["wall_s"], 2)
  result["max_abs_accuracy_difference"] = max(
      abs(result["uncached"]["accuracy"][g] - result["cached"]["accuracy"][g])
      for g in result["uncached"]["accuracy"])
  result["load_average_after"] = list(os.getloadavg())
  machine.report(result, args.out)


if __name__ == "__main__":
  main()
