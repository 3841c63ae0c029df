"""VGG16 training speed on CPU: cxr_jax's own train step against the same step in PyTorch.

Every variant trains the same network (VGG16 + flatten/256/3 head, RMSprop, the first 5-k blocks
frozen with a stop-gradient at the boundary) on the same random batch, each in a process of its own
(see `Worker`). Variants run in alternating rounds (A, B, C, A, B, C, ...) after their warm-up, so
that load from other processes on a shared machine hits all of them alike; the JSON reports the median images/s per variant, the ratios
against PyTorch fp32 channels_last, the load average during each round, the CPU model, forward-only
speed and per-layer weight-gradient GFLOP/s.

  python benchmarks/vs_pytorch.py --image-size 224 --batch 8 --trainable-blocks 5 2 \
      --out benchmarks/results/vs_pytorch_224.json

Variants (--variants): jax:<conv_impl>[:bf16][:pool=<pool_impl>] (cxr_jax.train.step's pmapped
step with config.model.conv_impl, `jax:auto` being the default config, optionally bfloat16
compute with float32 parameters, and config.model.pool_impl, default the config's; `:amx=off`
leaves out the AMX convolution, cxr_jax/ops/amx.py, as before it existed;
`jax:xla:pool=xla` is plain flax), torch:nchw,
torch:cl (channels_last), torch:bf16 (channels_last + bfloat16 autocast), keras (tf.keras, optional).
Any variant takes :malloc=keep|system|auto (cxr_jax.host_memory, applied in its worker before the
framework starts); unset, jax variants get config.host_memory's default, as launch.py does, and
the others glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cxr_jax import machine  # noqa: E402  (no JAX: XLA flags are set per worker)

# (block, in_channels, out_channels) of VGG16's 13 convs; spatial size halves after each block.
VGG16_CONVS = [(1, 3, 64), (1, 64, 64), (2, 64, 128), (2, 128, 128), (3, 128, 256), (3, 256, 256),
               (3, 256, 256), (4, 256, 512), (4, 512, 512), (4, 512, 512), (5, 512, 512),
               (5, 512, 512), (5, 512, 512)]
NUM_CLASSES, HIDDEN = 3, 256


def layer_shapes(size: int):
  """(block, H, C_in, C_out) per conv layer at input size `size`."""
  return [(b, size >> (b - 1), ci, co) for b, ci, co in VGG16_CONVS]


def step_flops(size: int, batch: int, trainable_blocks: int) -> dict:
  """Convolution FLOPs of one step: forward everywhere; weight gradient in trainable blocks; input
  gradient in trainable blocks except the first trainable conv (nothing below needs it)."""
  first = 6 - trainable_blocks
  fwd = wgrad = dgrad = 0
  seen_trainable = False
  for b, h, ci, co in layer_shapes(size):
    f = 2 * batch * h * h * 9 * ci * co
    fwd += f
    if b >= first:
      wgrad += f
      dgrad += f if seen_trainable else 0
      seen_trainable = True
  return {"forward": fwd, "weight_grad": wgrad, "input_grad": dgrad, "total": fwd + wgrad + dgrad}


# ------------------------------------------------------------------ JAX (the project's own step)

def jax_variant(spec: str, size: int, batch: int, trainable_blocks: int, data, devices: int = 1):
  """(train_fn, eval_fn) running cxr_jax.train.step's pmapped step on `devices` local devices,
  the batch split evenly over them as the trainer splits it."""
  import jax
  import jax.numpy as jnp

  from configs import default
  from cxr_jax import models
  from cxr_jax.evaluate.inference import compute_variables
  from cxr_jax.train import optim, step

  _, conv_impl, *options = spec.split(":")
  config = default.get_config()
  config.model.conv_impl = conv_impl
  config.model.trainable_blocks = trainable_blocks
  for option in options:
    if option.startswith("pool="):
      config.model.pool_impl = option.removeprefix("pool=")
    elif option == "amx=off":
      os.environ["CXR_JAX_AMX"] = "0"   # the formulations without the AMX convolution (before it)
    elif option != "bf16":
      raise ValueError(f"unknown option {option!r} in variant {spec!r}")
  dtype = jnp.bfloat16 if "bf16" in options else jnp.float32
  model = models.create_model(config.model, dtype=dtype)
  images, labels = data
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)))["params"])(
      jax.random.PRNGKey(0))
  tx = optim.make_optimizer(params, models.fine_tuning_plan(config.model), config.train)
  state = step.TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
                          plateau_state=optim.make_plateau(config.train).init({}),
                          rng=jax.random.PRNGKey(1))
  # Replicated the way p_train returns it, so the warm-up compiles the one program that is timed.
  state = jax.pmap(lambda s: s)(jax.tree.map(
      lambda a: jnp.broadcast_to(jnp.asarray(a), (devices, *jnp.shape(a))), state))
  p_train, p_eval = step.make_pmapped_steps(model, tx, NUM_CLASSES)
  if batch % devices:
    raise ValueError(f"a batch of {batch} does not split over {devices} devices")
  split = lambda a: a.reshape(devices, batch // devices, *a.shape[1:])
  batch_ = jax.device_put({"image": split(images), "label": split(labels),
                           "weight": np.ones((devices, batch // devices), np.float32)})
  holder = {"state": state}

  def train_fn():
    holder["state"], metrics = p_train(holder["state"], batch_)  # state is donated
    jax.block_until_ready(metrics)

  def eval_fn():
    # As the trainer's evaluation: the parameters rounded to the computation dtype once per pass
    # over the split (`compute_variables`), not per batch.
    if "eval" not in holder:
      holder["eval"] = compute_variables(model, {"params": holder["state"].params})
    jax.block_until_ready(p_eval(holder["eval"], batch_))

  return train_fn, eval_fn


# ------------------------------------------------------------------ PyTorch

def torch_vgg16(trainable_blocks: int):
  import torch
  from torch import nn

  blocks, c_prev, prev_block = [], 3, 0
  for b, ci, co in VGG16_CONVS:
    if b != prev_block:
      if blocks:
        blocks[-1].append(nn.MaxPool2d(2))
      blocks.append([])
      prev_block = b
    blocks[-1] += [nn.Conv2d(ci, co, 3, padding=1), nn.ReLU(inplace=True)]
    c_prev = co
  blocks[-1].append(nn.MaxPool2d(2))
  blocks = [nn.Sequential(*b) for b in blocks]
  frozen = nn.Sequential(*blocks[:5 - trainable_blocks])
  trainable = nn.Sequential(*blocks[5 - trainable_blocks:])
  head = nn.Sequential(nn.Flatten(), nn.LazyLinear(HIDDEN), nn.ReLU(), nn.Dropout(0.5),
                       nn.Linear(HIDDEN, NUM_CLASSES))
  for p in frozen.parameters():
    p.requires_grad_(False)
  del c_prev, torch
  return frozen, trainable, head


def torch_variant(spec: str, size: int, batch: int, trainable_blocks: int, data):
  import torch

  torch.set_num_threads(os.cpu_count())
  kind = spec.split(":")[1]
  frozen, trainable, head = torch_vgg16(trainable_blocks)
  images, labels = data
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  if kind in ("cl", "bf16"):
    x = x.contiguous(memory_format=torch.channels_last)
    for m in (frozen, trainable):
      m.to(memory_format=torch.channels_last)
  with torch.no_grad():
    head(trainable(frozen(x)))  # materialise the lazy layer
  params = [p for m in (trainable, head) for p in m.parameters()]
  opt = torch.optim.RMSprop(params, lr=1e-5, alpha=0.9, eps=1e-7)
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if kind == "bf16" else (
      lambda: torch.autocast("cpu", enabled=False))

  def train_fn():
    with autocast():
      with torch.no_grad():  # the frozen blocks: no graph, no backward
        feats = frozen(x)
      loss = torch.nn.functional.cross_entropy(head(trainable(feats)).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def eval_fn():
    with torch.no_grad(), autocast():
      head(trainable(frozen(x)))

  for m in (frozen, trainable, head):
    m.train()
  return train_fn, eval_fn


# ------------------------------------------------------------------ Keras (optional third column)

def keras_variant(spec: str, size: int, batch: int, trainable_blocks: int, data):
  import tensorflow as tf

  keras = tf.keras
  inputs = keras.Input((size, size, 3))
  x, prev_block = inputs, 1
  for i, (b, _, co) in enumerate(VGG16_CONVS):
    if b != prev_block:
      x = keras.layers.MaxPooling2D()(x)
      prev_block = b
    x = keras.layers.Conv2D(co, 3, padding="same", activation="relu", name=f"b{b}_c{i}",
                            trainable=b > 5 - trainable_blocks)(x)
  x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(HIDDEN, activation="relu")(x)
  x = keras.layers.Dropout(0.5)(x)
  outputs = keras.layers.Dense(NUM_CLASSES)(x)
  model = keras.Model(inputs, outputs)
  model.compile(optimizer=keras.optimizers.RMSprop(1e-5, rho=0.9, epsilon=1e-7),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
  images, labels = data
  x_t, y_t = tf.constant(images), tf.constant(labels)

  def train_fn():
    model.train_on_batch(x_t, y_t)

  def eval_fn():
    model.predict_on_batch(x_t)

  return train_fn, eval_fn


def make_variant(spec, *args):
  kind = spec.split(":")[0]
  return {"jax": jax_variant, "torch": torch_variant, "keras": keras_variant}[kind](spec, *args)


# ------------------------------------------------------------------ timing

def timed(fn, steps: int) -> float:
  t0 = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - t0) / steps


class Worker:
  """One variant in a process of its own, timed on command. Frameworks never share a process:
  once PyTorch's thread pool has run, JAX's step in the same process was 10-20 % slower and kept
  slowing (2-core AMD EPYC), which would have biased every in-process comparison."""

  def __init__(self, cmd: list[str], spec: str, env: dict | None = None):
    """`cmd` starts a process that answers as `serve` does; `spec` names it in errors; `env`
    adds to this process's environment."""
    self.spec = spec
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=None if env is None else {**os.environ, **env})
    self._reply()  # built and warmed up

  @classmethod
  def variant(cls, spec: str, args, trainable_blocks: int) -> Worker:
    """This benchmark's variant `spec` (`worker_main`)."""
    return cls([sys.executable, __file__, "--worker", spec, "--image-size", str(args.image_size),
                "--batch", str(args.batch), "--trainable-blocks", str(trainable_blocks),
                "--warmup", str(args.warmup)], spec)

  def _reply(self) -> str:
    for line in self.proc.stdout:
      if line.startswith(_REPLY):
        return line[len(_REPLY):].strip()
    raise RuntimeError(f"benchmark worker {self.spec!r} exited with {self.proc.wait()}; "
                       "its stderr is above")

  def __call__(self, what: str, steps: int) -> float:
    """Seconds per step of `steps` train or eval steps, timed inside the worker."""
    self.proc.stdin.write(f"{what} {steps}\n")
    self.proc.stdin.flush()
    return float(self._reply())

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait()


_REPLY = "@@ "


def worker_main(args) -> None:
  """--worker SPEC: builds the variant on the benchmark's data, warms it up, then answers
  "train N" / "eval N" lines on stdin with the seconds per step."""
  (k,) = args.trainable_blocks
  spec, malloc = split_malloc(args.worker)
  from cxr_jax import host_memory

  host_memory.configure(malloc)  # before the framework starts its threads, as launch.py does
  train_fn, eval_fn = make_variant(spec, args.image_size, args.batch, k, benchmark_data(args))
  for _ in range(args.warmup):
    train_fn()
  serve({"train": train_fn, "eval": eval_fn})


def serve(fns: dict) -> None:
  """A worker's side of `Worker`, once built and warmed up: says so, then answers each "WHAT N"
  line on stdin with the seconds per call of N calls of fns[WHAT] (each call returns when its
  work is done)."""
  print(_REPLY + "ready", flush=True)
  for line in sys.stdin:
    what, steps = line.split()
    print(_REPLY + repr(timed(fns[what], int(steps))), flush=True)


def split_malloc(spec: str) -> tuple[str, str]:
  """("jax:fast_mm", "keep") from "jax:fast_mm:malloc=keep". Unset, a jax variant gets the
  config's default (what launch.py applies) and PyTorch glibc's defaults (PyTorch as shipped)."""
  parts = spec.split(":")
  malloc = [p.removeprefix("malloc=") for p in parts if p.startswith("malloc=")]
  rest = ":".join(p for p in parts if not p.startswith("malloc="))
  if malloc:
    return rest, malloc[-1]
  if parts[0] == "jax":
    from configs import default

    return rest, default.get_config().host_memory
  return rest, "system"


def benchmark_data(args):
  rng = np.random.default_rng(0)
  return (rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
          rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32))


def alternate(workers: dict, what: str, rounds: int, steps: int) -> dict:
  """Median seconds per step of each worker, measured in alternating rounds."""
  times = {name: [] for name in workers}
  loads = []
  for _ in range(rounds):
    for name, worker in workers.items():
      times[name].append(worker(what, steps))
    loads.append(round(os.getloadavg()[0], 2))
  return {"median_s": {n: statistics.median(t) for n, t in times.items()},
          "all_s": {n: [round(v, 4) for v in t] for n, t in times.items()}, "loadavg": loads}


def round_ratios(res: dict, reference: str) -> dict:
  """Ratios to the reference that hold up on a machine whose speed swings within a run (a shared
  2-core VM: the same step 2-3x apart minutes apart): "paired", the median over rounds of each
  round's reference time / variant time (the two ran seconds apart); "best", best time against
  best time. The median-time ratio (`ratio_vs_reference`) stays the headline where the machine
  is steady."""
  times = res["all_s"]
  if reference not in times:
    return {}
  return {"paired": {v: round(statistics.median(r / t for r, t in zip(times[reference], ts, strict=True)), 3)
                     for v, ts in times.items()},
          "best": {v: round(min(times[reference]) / min(ts), 3) for v, ts in times.items()}}


def weight_grad_table(size: int, batch: int, rounds: int) -> list[dict]:
  """GFLOP/s of each VGG16 layer's weight gradient: every cxr_jax formulation and PyTorch's."""
  import torch

  from cxr_jax.ops import tuning

  rows, seen = [], set()
  for b, h, ci, co in layer_shapes(size):
    if (h, ci, co) in seen:
      continue
    seen.add((h, ci, co))
    flops = 2 * batch * h * h * 9 * ci * co
    shapes = ((batch, h, h, ci), (3, 3, ci, co), ((1, 1), (1, 1)), "float32")
    # The training run's own measurements when it made them (same machine, same load), else now.
    entry = tuning._load().get(tuning.key("wgrad", *shapes))
    jax_s = entry["seconds"] if entry else tuning.measure(*shapes)
    x = torch.randn(batch, ci, h, h).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(batch, co, h, h).contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci, 3, 3).contiguous(memory_format=torch.channels_last)

    def torch_wgrad(x=x, dy=dy, w=w, co=co):
      torch.ops.aten.convolution_backward(dy, x, w, [co], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                          [False, True, False])

    torch_wgrad()
    torch_s = min(timed(torch_wgrad, 1) for _ in range(rounds))
    gf = {f"jax_{k}": round(flops / v / 1e9, 1) for k, v in jax_s.items()}
    gf["torch_cl"] = round(flops / torch_s / 1e9, 1)
    rows.append({"block": b, "hw": h, "c_in": ci, "c_out": co, "gflops_per_s": gf,
                 "loadavg": round(os.getloadavg()[0], 2)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def sgemm_peak(n: int = 2048) -> dict:
  """Large fp32/bf16 matmul GFLOP/s in both frameworks: the practical compute ceiling here."""
  import jax.numpy as jnp
  import torch

  out = {}
  kinds = [("fp32", jnp.float32, torch.float32)]
  if machine.native_bf16():
    kinds.append(("bf16", jnp.bfloat16, torch.bfloat16))
  else:  # emulated bf16 ran one 2048^3 product for over 5 minutes on an AVX2-only EPYC
    out["bf16"] = {"skipped": f"no native bfloat16 instructions ({', '.join(machine.BF16_FLAGS)})"}
  for dt_name, jdt, tdt in kinds:
    ta = torch.ones(n, n, dtype=tdt)
    torch_mm = lambda ta=ta: ta @ ta
    torch_mm()
    t_t = min(timed(torch_mm, 1) for _ in range(5))
    out[dt_name] = {"jax": round(jax_matmul_gflops(jdt, n), 1), "torch": round(2 * n ** 3 / t_t / 1e9, 1)}
  return out


def jax_matmul_gflops(dtype, n: int = 2048) -> float:
  """GFLOP/s of JAX's n^3 matmul (float32 accumulation), best of 5 after a warm-up."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  jax_mm = lambda: jax.block_until_ready(f(a))
  jax_mm()
  return 2 * n ** 3 / min(timed(jax_mm, 1) for _ in range(5)) / 1e9


def markdown(result: dict) -> str:
  """The before/after table of a result, for benchmarks/results/*.md and the notes."""
  m = result["machine"]
  lines = [f"VGG16 + head, {result['image_size']} px, batch {result['batch']}, {m['cpu']}, "
           f"{m['cores']} cores ({m.get('isa_level', '?')}: {' '.join(m['isa'])}); medians of "
           f"{result['rounds']} alternating rounds (paired: median of the rounds' own ratios; "
           f"best: best time against best time), {result['started']}."
           + (f" Context: {result['context']}." if result.get("context") else ""), "",
           f"Large-matmul ceiling (2048^3): {json.dumps(result['sgemm_gflops_per_s'])} GFLOP/s.", ""]
  for k, res in result["train"].items():
    lines += [f"Training step, {k.replace('_', ' ')} (load average {min(res['loadavg'])}-"
              f"{max(res['loadavg'])} on {m['cores']} cores):", "",
              "| variant | images/s | conv GFLOP/s | vs reference | paired | best |",
              "|---|---|---|---|---|---|"]
    rr = res.get("round_ratios", {})
    for v, ips in res["images_per_s"].items():
      lines.append(f"| {v} | {ips} | {res['conv_gflops_per_s'][v]} | "
                   f"{res['ratio_vs_reference'].get(v, '')} | {rr.get('paired', {}).get(v, '')} | "
                   f"{rr.get('best', {}).get(v, '')} |")
    lines.append("")
  if result.get("forward"):
    rr = result["forward"].get("round_ratios", {})
    lines += ["Forward only (inference), images/s: " + ", ".join(
        f"{v} {ips}" for v, ips in result["forward"]["images_per_s"].items())
        + ("; vs reference paired / best: " + ", ".join(
            f"{v} {rr['paired'][v]} / {rr['best'][v]}" for v in rr["paired"]) if rr else ""), ""]
  if result.get("weight_grad_layers"):
    names = list(result["weight_grad_layers"][0]["gflops_per_s"])
    lines += ["Weight gradient per layer shape, GFLOP/s (best of 3):", "",
              "| block | HxW | C_in | C_out | " + " | ".join(names) + " |",
              "|---" * (4 + len(names)) + "|"]
    for r in result["weight_grad_layers"]:
      lines.append(f"| {r['block']} | {r['hw']} | {r['c_in']} | {r['c_out']} | " +
                   " | ".join(str(r["gflops_per_s"][n]) for n in names) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--trainable-blocks", type=int, nargs="+", default=[5, 2])
  ap.add_argument("--variants", nargs="+",
                  default=["jax:auto", "jax:xla:pool=xla", "jax:fast", "jax:fast_mm", "torch:nchw",
                           "torch:cl", "torch:bf16"])
  ap.add_argument("--reference", default="torch:cl", help="variant the ratios are taken against")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=1, help="steps per timed run")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--no-forward", action="store_true")
  ap.add_argument("--layers", action="store_true", help="per-layer weight-gradient GFLOP/s")
  ap.add_argument("--context", default="", help="what else ran on the machine (stored in the JSON), "
                  "e.g. 'background training paused; other helpers' tests running'")
  ap.add_argument("--out", type=Path)
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    return worker_main(args)

  result = {"machine": machine.describe(), "image_size": args.image_size, "batch": args.batch,
            "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": os.getloadavg()[0],
            "context": args.context,
            "sgemm_gflops_per_s": sgemm_peak(), "one_process_per_variant": True,
            "train": {}, "forward": {}}
  print(json.dumps(result["sgemm_gflops_per_s"]), flush=True)
  for k in args.trainable_blocks:
    # Built one after another (compiling and warming up), then timed in alternating rounds.
    made = {v: Worker.variant(v, args, k) for v in args.variants}
    flops = step_flops(args.image_size, args.batch, k)
    res = alternate(made, "train", args.rounds, args.steps)
    med = res["median_s"]
    res["images_per_s"] = {v: round(args.batch / s, 3) for v, s in med.items()}
    res["conv_gflops_per_s"] = {v: round(flops["total"] / s / 1e9, 1) for v, s in med.items()}
    res["ratio_vs_reference"] = {v: round(med[args.reference] / s, 3) for v, s in med.items()} if (
        args.reference in med) else {}
    res["round_ratios"] = round_ratios(res, args.reference)
    res["conv_flops"] = flops
    result["train"][f"trainable_blocks_{k}"] = res
    print(json.dumps({"trainable_blocks": k, "images_per_s": res["images_per_s"],
                      "ratio": res["ratio_vs_reference"], "loadavg": res["loadavg"]}), flush=True)
    if not args.no_forward and k == args.trainable_blocks[0]:
      for worker in made.values():
        worker("eval", 1)  # compiles the forward pass
      fwd = alternate(made, "eval", args.rounds, args.steps)
      fwd["images_per_s"] = {v: round(args.batch / s, 3) for v, s in fwd["median_s"].items()}
      fwd["round_ratios"] = round_ratios(fwd, args.reference)
      result["forward"] = fwd
      print(json.dumps({"forward_images_per_s": fwd["images_per_s"]}), flush=True)
    for worker in made.values():
      worker.close()
  if args.layers:
    result["weight_grad_layers"] = weight_grad_table(args.image_size, args.batch, 3)
  result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
  text = json.dumps(result, indent=1)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".md").write_text(markdown(result))
  print(text)


if __name__ == "__main__":
  main()
