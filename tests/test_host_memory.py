"""cxr_jax.host_memory: with "keep", a large block freed by a worker thread is kept and reused
(no fresh pages for the next step); with "system", glibc gives it back to the kernel."""

import json
import subprocess
import sys
import textwrap

import pytest

from cxr_jax import host_memory

# Allocates, touches and frees 256 MB three times in a new thread (XLA's temporaries come from its
# worker threads), recording resident size after each free and page faults of each round.
_PROBE = textwrap.dedent("""
    import ctypes, json, resource, sys, threading
    from cxr_jax import host_memory
    applied = host_memory.configure(sys.argv[1])
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    SIZE, PAGE = 256 << 20, resource.getpagesize()
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * PAGE
    rounds = []
    def work():
      for _ in range(3):
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
        peak = rss()
        libc.free(block)
        rounds.append({"faults": faults, "peak": peak, "after_free": rss()})
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(json.dumps({"applied": applied, "pages": SIZE // PAGE, "rounds": rounds}))
""")

glibc_only = pytest.mark.skipif(not host_memory.is_glibc(), reason="glibc's mallopt")


def _probe(mode):
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout)


@glibc_only
def test_keep_reuses_a_freed_block_without_new_pages():
  got = _probe("keep")
  assert got["applied"]
  for r in got["rounds"][1:]:
    assert r["faults"] < 0.02 * got["pages"], got
    assert r["peak"] - r["after_free"] < 16 << 20, got  # kept resident after free


@glibc_only
def test_system_returns_a_freed_block_to_the_kernel():
  """The probe can tell the two apart: glibc's defaults unmap the block on free."""
  got = _probe("system")
  assert not got["applied"]
  for r in got["rounds"]:
    assert r["peak"] - r["after_free"] > 200 << 20, got


def test_unknown_mode_names_the_config_field():
  with pytest.raises(ValueError, match="config.host_memory='fast'"):
    host_memory.configure("fast")


@pytest.mark.parametrize("platforms,expected", [("cpu", False), ("cuda", True), ("tpu,cpu", True)])
def test_jax_platforms_decides_auto(monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.accelerator_plugin_installed() is expected


def test_auto_leaves_the_allocator_alone_with_an_accelerator(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  monkeypatch.setattr(host_memory, "_applied", False)
  monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called"))
  assert host_memory.configure("auto") is False
