"""Machine description shared by the benchmarks' JSON results: cxr_jax.machine's, plus devices."""

from __future__ import annotations

from cxr_jax import machine


def describe() -> dict:
  import jax

  return {**machine.describe(), "devices": [str(d) for d in jax.devices()]}


def report(result: dict, out=None) -> None:
  """Prints a benchmark's JSON result and, where `out` is given, writes it there (atomically)."""
  import json

  from cxr_jax import files

  text = json.dumps(result, indent=2) + "\n"
  print(text, end="")
  if out:
    files.write_atomic(out, text)
