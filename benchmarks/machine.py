"""Machine description shared by the benchmarks' JSON results."""

from __future__ import annotations

import os
import platform

from cxr_jax.ops.tuning import cpu_model


def describe() -> dict:
  import jax

  return {
      "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__,
      "devices": [str(d) for d in jax.devices()],
      "load_average": os.getloadavg(),
  }
