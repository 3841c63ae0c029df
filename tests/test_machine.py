"""cxr_jax.machine: the ISA flags, not only the model name, identify a machine's measurements."""

import jax.numpy as jnp

from cxr_jax import machine
from cxr_jax.ops import tuning

AVX2 = frozenset("fpu sse4_2 avx avx2 fma bmi2".split())
AVX512 = AVX2 | frozenset("avx512f avx512bw avx512vl avx512_vnni avx512_bf16".split())


def _as(monkeypatch, model, flags):
  monkeypatch.setattr(machine, "_cpuinfo", lambda: (model, flags))


def test_isa_levels_and_native_bf16(monkeypatch):
  _as(monkeypatch, "AMD EPYC", AVX2)
  assert machine.isa() == ["sse4_2", "avx", "avx2", "fma"]  # fpu, bmi2: not ISA_FLAGS
  assert machine.isa_level() == "avx2" and not machine.native_bf16()
  assert machine.summary().startswith("AMD EPYC, ") and "avx2 (sse4_2 avx avx2 fma)" in machine.summary()
  _as(monkeypatch, "AMD EPYC", AVX512)
  assert machine.isa_level() == "avx512_bf16" and machine.native_bf16()
  _as(monkeypatch, "Intel(R) Xeon(R) Processor", AVX512 | {"amx_tile", "amx_bf16"})
  assert machine.isa_level() == "amx"
  _as(monkeypatch, "", frozenset())
  assert machine.isa_level() == "unknown" and "flags unknown" in machine.summary()


def test_tuning_cache_key_tells_same_named_cpus_apart(monkeypatch, tmp_path):
  """An "AMD EPYC" with AVX2 only and one with AVX-512 share the model name; a choice measured on
  one must not be read on the other (a shared home directory, a copied cache)."""
  args = ("wgrad", (2, 6, 6, 3), (3, 3, 3, 4), ((1, 1), (1, 1)), jnp.float32)
  _as(monkeypatch, "AMD EPYC", AVX2)
  avx2_key = tuning.key(*args)
  _as(monkeypatch, "AMD EPYC", AVX512)
  assert tuning.key(*args) != avx2_key
  assert "avx512_bf16" in tuning.key(*args) and "avx512" not in avx2_key


def test_machine_record_names_model_isa_and_cores():
  record = machine.describe()
  assert record["cpu"] == machine.cpu_model() and record["isa"] == machine.isa()
  assert record["isa_level"] == machine.isa_level() and record["cores"] >= 1
