"""The quick start timed phase by phase, as a new user runs it, with its metrics and machine.

  python benchmarks/quickstart_bench.py --out benchmarks/results/quickstart.json           # warm caches
  python benchmarks/quickstart_bench.py --cold --out benchmarks/results/quickstart_cold.json

Phases (each a subprocess, as `make train` runs them): setup (`make setup`: nothing when the venv
is current), weights (`python -m cxr_jax.weights fetch vgg16`), data (the quick start's dataset
build), train (`launch.py --config=configs/quickstart.py`: training and the test-split
evaluation; the dataset is already built; with the external evaluation on ../shared/data/cxr-external
when it is there, as `make train` does). `--cold` points every cache (weights, datasets, XLA
compilations, tuning) at an empty folder, so the figures include downloading the weights,
decoding every image and compiling every step; the venv is kept. The JSON records the machine
(CPU model and ISA flags), wall seconds per phase, and the test-split headline from the run's
metrics.json, including the per-source figures that qualify it, and the external headline.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks import machine as bench_machine  # noqa: E402  (report() only: no JAX)
from cxr_jax import machine  # noqa: E402  (no JAX here: every phase is its own process)


def _phase(name: str, cmd: list[str], env: dict, log: Path) -> float:
  print(f"[{name}] {' '.join(cmd)}", flush=True)
  start = time.perf_counter()
  with open(log, "a") as out:
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f"phase {name} failed (exit {done.returncode}); its output is in {log}")
  print(f"[{name}] {seconds:.1f} s", flush=True)
  return round(seconds, 1)


def headline(metrics: dict) -> dict:
  """Accuracy with its patient-bootstrap interval, per-class AUC / sensitivity / specificity, and
  what the source alone reaches, per source accuracy and COVID AUC where a source has both."""
  per_class = {n: {k: c.get(k) for k in ("roc_auc", "sensitivity", "specificity")}
               for n, c in metrics["per_class"].items()}
  by_source = {s: {"images": v["num_examples"], "accuracy": v["accuracy"],
                   "covid_auc": v["per_class"].get("covid", {}).get("roc_auc")}
               for s, v in metrics.get("by_source", {}).items()}
  return {"images": metrics["num_examples"], "accuracy": metrics["accuracy"],
          "accuracy_ci95": metrics.get("intervals", {}).get("accuracy"), "per_class": per_class,
          "source_only_accuracy": metrics.get("source_only_accuracy"), "by_source": by_source}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/quickstart.py")
  ap.add_argument("--cold", action="store_true", help="empty caches: weights, datasets, compiles")
  ap.add_argument("--workdir", type=Path, help="default: a new temporary folder")
  ap.add_argument("--out", type=Path)
  ap.add_argument("--external", default=str(REPO.parent / "shared" / "data" / "cxr-external"),
                  help="manifest folder evaluated after training, as `make train` ('' = none)")
  args = ap.parse_args(argv)

  scratch = Path(tempfile.mkdtemp(prefix="quickstart_bench_"))
  workdir = args.workdir or scratch / "run"
  env = dict(os.environ)
  env.setdefault("CXR_DATA", str((REPO.parent / "shared" / "data" / "cxr3").resolve()))
  if args.cold:
    env["CXR_JAX_CACHE"] = str(scratch / "cache")
    for var in ("CXR_JAX_DATA_DIR", "CXR_JAX_WEIGHTS", "JAX_COMPILATION_CACHE_DIR"):
      env.pop(var, None)
  py = str(REPO / ".venv" / "bin" / "python")
  log = scratch / "phases.log"
  result = {"command": " ".join(sys.argv), "config": args.config, "cold_caches": args.cold,
            "machine": machine.describe(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "log": str(log), "phases_s": {}}
  phases = [("setup", ["make", "setup"]),
            ("weights", [py, "-m", "cxr_jax.weights", "fetch", "vgg16"]),
            ("data", [py, "-m", "cxr_jax.data", f"--config={args.config}"]),  # $CXR_DATA
            ("train", [py, "launch.py", f"--config={args.config}", f"--workdir={workdir}"])]
  external = Path(args.external) if args.external else None
  if external and (external / "manifest.csv").is_file():
    phases[-1][1].append(f"--external=manifest:{external.resolve()}")
  for name, cmd in phases:
    result["phases_s"][name] = _phase(name, cmd, env, log)
  result["total_s"] = round(sum(result["phases_s"].values()), 1)
  result["load_average_end"] = os.getloadavg()
  result["test_split"] = headline(json.loads((workdir / "metrics.json").read_text()))
  for path in sorted((workdir / "external").glob("*/metrics.json")):
    result.setdefault("external", {})[path.parent.name] = json.loads(path.read_text())["headline"]
  bench_machine.report(result, args.out)


if __name__ == "__main__":
  main()
