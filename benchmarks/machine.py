"""Machine description shared by the benchmarks' JSON results: cxr_jax.machine's, plus devices."""

from __future__ import annotations

from cxr_jax import machine


def describe() -> dict:
  import jax

  return {**machine.describe(), "devices": [str(d) for d in jax.devices()]}
