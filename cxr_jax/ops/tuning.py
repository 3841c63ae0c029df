"""Chooses a formulation per (op, shapes, dtype) by measurement, cached on disk.

Ops: "wgrad" (weight gradient, `wgrad.FORMULATIONS`) and "fwd" (forward / input gradient,
`fwd.FORMULATIONS`). The choice is made at trace time (shapes are static), so it costs one
measurement per new layer shape per machine; later runs read `<cache_dir>/ops/wgrad_choices.json`. Measurements on a shared
CPU are noisy: each candidate is timed in alternating rounds and scored by its minimum, the time
least disturbed by other processes. Set CXR_JAX_WGRAD_TUNE=0 to skip measuring and use the fixed
rule in `wgrad.rule`; the cache file is plain JSON and can be edited or deleted.
"""

from __future__ import annotations

import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import files, machine, paths
from cxr_jax.ops import amx, fwd, wgrad, winograd

OPS = {"wgrad": wgrad.FORMULATIONS, "fwd": fwd.FORMULATIONS}
_LOCK = threading.Lock()
_MEMO: dict[str, str] = {}
ROUNDS = 3


def cache_path():
  return paths.cache_dir() / "ops" / "wgrad_choices.json"


def _machine() -> str:
  """Choices are per CPU model, ISA flags and thread count: they do not transfer between machines
  (one model name, e.g. "AMD EPYC", is sold with AVX2 only and with AVX-512)."""
  return f"{machine.fingerprint()}|jax{jax.__version__}"


def key(op, x_shape, kernel_shape, padding, dtype) -> str:
  pads = ",".join(f"{lo}:{hi}" for lo, hi in padding)
  prefix = "" if op == "wgrad" else f"{op}|"  # "wgrad" keys predate the op field
  return (f"{prefix}{_machine()}|x{'x'.join(map(str, x_shape))}|k{'x'.join(map(str, kernel_shape))}"
          f"|p{pads}|{jnp.dtype(dtype).name}")


def _load() -> dict:
  try:
    return json.loads(cache_path().read_text())
  except FileNotFoundError:
    return {}
  except (OSError, json.JSONDecodeError) as e:
    raise RuntimeError(f"cannot read the weight-gradient choice cache {cache_path()} ({e}); "
                       "delete it to measure again") from e


def _store(k: str, entry: dict) -> None:
  table = _load()
  table[k] = entry
  files.write_json(cache_path(), table, sort_keys=True)  # concurrent processes never see half a file


def _runner(op, name, kernel_shape, padding, dtype):
  f = OPS[op][name]
  if op == "wgrad":
    return jax.jit(lambda x, y: f(x, y, kernel_shape, padding, dtype))
  return jax.jit(lambda x, w: f(x, w, padding))


def applicable(op, kernel_shape, dtype) -> tuple[str, ...]:
  """The formulations of `op` that compute a convolution with this kernel shape and dtype."""
  return tuple(n for n in OPS[op]
               if winograd.covers(n, kernel_shape, dtype) and amx.covers(n, kernel_shape, dtype))


def measure(x_shape, kernel_shape, padding, dtype, candidates=None, op="wgrad") -> dict[str, float]:
  """Best-of-ROUNDS seconds of each formulation of `op` on random data of these shapes."""
  candidates = tuple(candidates or applicable(op, kernel_shape, dtype))
  rng = np.random.default_rng(0)
  out_hw = tuple(s + lo + hi - k + 1
                 for s, (lo, hi), k in zip(x_shape[1:3], padding, kernel_shape[:2], strict=True))
  dy_shape = (x_shape[0],) + out_hw + (kernel_shape[3],)
  # Measuring happens while an outer jit traces; compile-time eval runs these eagerly.
  with jax.ensure_compile_time_eval():
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32), dtype)
    other = dy_shape if op == "wgrad" else kernel_shape
    y = jnp.asarray(rng.standard_normal(other, np.float32), dtype)
    fns = {name: _runner(op, name, kernel_shape, padding, dtype) for name in candidates}
    for fn in fns.values():
      jax.block_until_ready(fn(x, y))  # compile + warm up
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(ROUNDS):
      for name in candidates:  # alternating, so contention hits every candidate alike
        t0 = time.perf_counter()
        jax.block_until_ready(fns[name](x, y))
        best[name] = min(best[name], time.perf_counter() - t0)
  return best


def rule(op, x_shape, kernel_shape, dtype) -> str:
  if op == "wgrad":
    return wgrad.rule(x_shape, kernel_shape, dtype)
  return fwd.rule(x_shape, kernel_shape, dtype)


def choose(x_shape, kernel_shape, padding, dtype, op="wgrad") -> str:
  """The formulation of `op` to use for these shapes: cached, measured now, or by rule."""
  x_shape, kernel_shape = tuple(x_shape), tuple(kernel_shape)
  padding = tuple(tuple(p) for p in padding)
  k = key(op, x_shape, kernel_shape, padding, dtype)
  with _LOCK:
    if k in _MEMO:
      return _MEMO[k]
    entry = _load().get(k)
    # An entry measured before a formulation existed is measured again (a hand-edited one,
    # without "seconds", is kept).
    stale = (entry is not None and "seconds" in entry
             and not set(applicable(op, kernel_shape, dtype)) <= set(entry["seconds"]))
    if entry is None or stale or entry.get("choice") not in OPS[op]:
      if os.environ.get("CXR_JAX_WGRAD_TUNE", "1") == "0":
        return rule(op, x_shape, kernel_shape, dtype)
      times = measure(x_shape, kernel_shape, padding, dtype, op=op)
      entry = {"choice": min(times, key=times.get), "seconds": times,
               "loadavg": os.getloadavg()[0], "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
      _store(k, entry)
    _MEMO[k] = entry["choice"]
    return entry["choice"]
