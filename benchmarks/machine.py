"""Machine description shared by the benchmarks' JSON results."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def describe() -> dict:
  import jax

  return {
      "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__,
      "devices": [str(d) for d in jax.devices()],
      "load_average": os.getloadavg(),
  }
