"""Host memory allocator settings for XLA's CPU backend (glibc only).

XLA's CPU runtime mallocs every temporary of a step (activations, gradients, Winograd tiles) and
frees it at the end. glibc hands blocks above its mmap threshold, and any large block of a
worker thread's arena, straight back to the kernel, so every step faults all of them in again as
fresh zeroed pages: ~1 GB per VGG16 step at 224 px, batch 8, 0.5-0.7 s of system time and ~10 %
of the step on a 2-core AMD EPYC (benchmarks/results/vs_pytorch.md). Serving every thread from
the main heap, without mmap and without trimming, keeps those pages and reuses them: the process
stays at its peak resident size instead of returning to below it between steps.

The settings are process-wide and only fully take effect before the runtime starts its threads
(a thread keeps the arena it first allocated from), so entry points call `configure` first thing:
launch.py, the tuner, the benchmarks, the notebooks' setup cell (before anything runs JAX).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import platform

MODES = ("auto", "keep", "system")
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never give back less than 2 GiB of free top

_applied = False


def accelerator_plugin_installed() -> bool:
  """Whether JAX will find a GPU/TPU runtime; the allocator settings are for its CPU backend.

  Decided without starting a backend (that would start the threads too early)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() not in ("cpu", "")
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  return any(importlib.util.find_spec(m) is not None for m in ("libtpu", "jax_plugins"))


def is_glibc() -> bool:
  """Whether mallopt (glibc's) is there to call."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def configure(mode: str = "auto") -> bool:
  """Applies `mode` ("keep": reuse freed memory; "system": glibc's defaults; "auto": keep unless
  an accelerator runtime is installed). Returns whether the keep settings are now in effect."""
  global _applied
  if mode not in MODES:
    raise ValueError(f"config.host_memory={mode!r}: expected one of {MODES}")
  if mode == "system" or (mode == "auto" and accelerator_plugin_installed()):
    return _applied
  if _applied:
    return True
  if not is_glibc():
    logging.info("host_memory=%s: not glibc (%s), allocator left as is", mode, platform.libc_ver())
    return False
  libc = ctypes.CDLL("libc.so.6")
  ok = all(libc.mallopt(param, value) == 1 for param, value in
           ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
  if not ok:
    logging.warning("host_memory=%s: glibc's mallopt refused a setting; allocator partly as is",
                    mode)
  _applied = ok
  return ok
