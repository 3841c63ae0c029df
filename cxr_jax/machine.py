"""What CPU this process runs on: model name and the instruction sets that change speed or rounding.

One home for the machine facts that figures, caches and test reports carry. CPUs of one model
name differ ("AMD EPYC" is sold with AVX2 only and with AVX-512 + BF16), and XLA's CPU code, its
matmul kernels and so their rounding follow the instruction sets, so everything keyed by machine
uses the ISA flags, not only the name. Imports no JAX: benchmarks read it before XLA starts.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

# The /proc/cpuinfo flags that change what XLA, oneDNN and PyTorch run, lowest tier first.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# Native bfloat16 matrix products: without one of these a bf16 matmul is emulated (minutes, not ms).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
  model, flags = "", frozenset()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not model and line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
        elif not flags and line.startswith("flags"):
          flags = frozenset(line.split(":", 1)[1].split())
        if model and flags:
          break
  except OSError:
    pass
  return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
  return _cpuinfo()[0]


def isa() -> list[str]:
  """The ISA_FLAGS this CPU has, in ISA_FLAGS' order (empty where /proc/cpuinfo is missing)."""
  flags = _cpuinfo()[1]
  return [f for f in ISA_FLAGS if f in flags]


def isa_level() -> str:
  """The highest tier: 'amx', 'avx512_bf16', 'avx512', 'avx2', 'avx' or 'unknown'."""
  have = set(isa())
  for level, flag in (("amx", "amx_tile"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"),
                      ("avx2", "avx2"), ("avx", "avx")):
    if flag in have:
      return level
  return "unknown"


def native_bf16() -> bool:
  return any(f in _cpuinfo()[1] for f in BF16_FLAGS)


def fingerprint() -> str:
  """Model, ISA flags and core count: what a machine-specific measurement is valid for."""
  return f"{cpu_model()}|{'+'.join(isa()) or 'isa?'}|{os.cpu_count()}cpu"


def summary() -> str:
  """One line for logs and test reports, e.g. 'AMD EPYC 7B13, 2 cores, avx2 (sse4_2 avx avx2 fma)'."""
  return f"{cpu_model()}, {os.cpu_count()} cores, {isa_level()} ({' '.join(isa()) or 'flags unknown'})"


def describe() -> dict:
  """The machine record every benchmark JSON carries."""
  def version(pkg):
    try:
      return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      return None

  return {"cpu": cpu_model(), "isa_level": isa_level(), "isa": isa(), "cores": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": version("jax"), "jaxlib": version("jaxlib"),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": os.getloadavg()}
