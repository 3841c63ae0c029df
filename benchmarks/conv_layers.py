"""Every convolution formulation of cxr_jax.ops on VGG16's distinct layer shapes, and what the
fixed rule (conv_impl=auto) takes: where the rules' choices come from.

  python benchmarks/conv_layers.py --image-size 224 --batch 8 --dtype bfloat16 \
      --out benchmarks/results/conv_layers_224_bf16_xeon_amx.json

Per distinct (input, kernel) of VGG16 at --image-size: the forward pass at batch 1 (prediction)
and --batch (training), the input gradient (the forward problem of dy and the flipped kernel) and
the weight gradient at --batch; each candidate timed by `tuning.measure` (alternating rounds, best
of 3, so load from other processes hits every candidate alike). JSON with the machine, and a
Markdown table beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def problems(size: int, batch: int):
  """(op, x shape, kernel shape) per distinct problem of a VGG16 training step and prediction."""
  from benchmarks.vs_pytorch import layer_shapes

  out = []
  for _, h, ci, co in layer_shapes(size):
    for op, x, k in (("fwd", (1, h, h, ci), (3, 3, ci, co)), ("fwd", (batch, h, h, ci), (3, 3, ci, co)),
                     ("fwd", (batch, h, h, co), (3, 3, co, ci)),  # input gradient: dy * flipped kernel
                     ("wgrad", (batch, h, h, ci), (3, 3, ci, co))):
      # Training never takes the image's gradient (the first conv's input gradient).
      if (op, x, k) not in out and k[3] != 3:
        out.append((op, x, k))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--formulations", default="",
                  help="comma-separated formulations to time (and the rule's); default: every one")
  ap.add_argument("--out", type=Path, required=True)
  args = ap.parse_args(argv)

  import jax.numpy as jnp

  from benchmarks import machine as bench_machine
  from cxr_jax import files
  from cxr_jax.ops import amx, tuning

  dtype = jnp.dtype(args.dtype)
  pads = ((1, 1), (1, 1))
  rows = []
  wanted = {n for n in args.formulations.split(",") if n}
  for op, x, k in problems(args.image_size, args.batch):
    rule = tuning.rule(op, x, k, dtype)
    candidates = [n for n in tuning.applicable(op, k, dtype) if not wanted or n in wanted or n == rule]
    seconds = tuning.measure(x, k, pads, dtype, candidates=candidates, op=op)
    best = min(seconds, key=seconds.get)
    rows.append(dict(op=op, x=x, kernel=k, seconds=seconds, best=best, rule=rule,
                     loadavg=os.getloadavg()[0]))
    print(f"{op:5s} x{'x'.join(map(str, x)):18s} k{'x'.join(map(str, k)):12s} best {best:9s} "
          f"{seconds[best] * 1e3:7.1f} ms  rule {rule:9s} {seconds[rule] * 1e3:7.1f} ms", flush=True)
  doc = dict(benchmark="conv_layers", image_size=args.image_size, batch=args.batch, dtype=args.dtype,
             formulations=sorted(wanted) or "all",
             machine=bench_machine.describe(), amx=amx.unavailable_reason() or "available",
             date=time.strftime("%Y-%m-%d"), rows=rows)
  files.write_json(args.out, doc)
  files.write_atomic(args.out.with_suffix(".md"), markdown(doc))
  return 0


def markdown(doc: dict) -> str:
  m = doc["machine"]
  loads = [r["loadavg"] for r in doc["rows"]]
  lines = [f"Convolution formulations ({doc.get('formulations', 'all')} and the rule's), VGG16 at "
           f"{doc['image_size']} px, {doc['dtype']}, "
           f"{m.get('cpu')} ({' '.join(m.get('isa', []))}), {doc['date']}; AMX formulation: "
           f"{doc['amx']}; load average {min(loads):.1f}-{max(loads):.1f}. Milliseconds, best of 3 "
           "alternating rounds; * where the rule is not the measured best.", "",
           "| op | input | kernel | best | ms | rule | ms | all (ms) |", "|---|---|---|---|---|---|---|---|"]
  for r in doc["rows"]:
    s = r["seconds"]
    every = " ".join(f"{n}:{v * 1e3:.0f}" for n, v in sorted(s.items(), key=lambda kv: kv[1]))
    star = "" if r["rule"] == r["best"] else " *"
    lines.append(f"| {r['op']} | x{'x'.join(map(str, r['x']))} | k{'x'.join(map(str, r['kernel']))} | "
                 f"{r['best']} | {s[r['best']] * 1e3:.1f} | {r['rule']}{star} | {s[r['rule']] * 1e3:.1f} | "
                 f"{every} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
