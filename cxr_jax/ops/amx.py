"""Stride-1 bfloat16 convolutions on Intel AMX tiles, through an XLA FFI custom call.

XLA:CPU in jaxlib 0.10.2 runs a bfloat16 convolution at its float32 speed (120-230 GFLOP/s on a
2-core AMX Xeon, where its bf16 matrix product reaches 1.5 TFLOP/s and PyTorch's oneDNN
convolution ~1 TFLOP/s), and no XLA flag routes it to the AMX units (benchmarks/results/
bf16_step_profile_xeon_amx.md). `native/amx_conv.cc` runs the same sums on the tiles: an implicit
matrix product over the flat padded input (each tap's operand is a contiguous row range, loaded in
place, no im2col), bfloat16 products with float32 accumulation as every bf16 product in cxr_jax.

  forward      x [N, H, W, C] * w [KH, KW, C, O] -> [N, H', W', O] (x.dtype), also the input gradient
               (`fwd.FORMULATIONS["amx"]`; conv.py applies it to dy and the flipped kernel)
  weight_grad  dw [KH, KW, C, O] from x and dy, float32 sums (`wgrad.FORMULATIONS["amx"]`)

Covered: bfloat16, C and O multiples of 32 (VGG16's layers but the first, DenseNet121's 3x3
convolutions), on a CPU with amx_bf16 whose kernel lets the process use the tiles. The library is
compiled on first use with the system's C++ compiler (`$CXX`, else c++ / g++) against jaxlib's FFI
headers into `<cache>/native/`, keyed by the source, flags and jaxlib version. Anywhere that fails
(no AMX, no compiler, another backend, CXR_JAX_AMX=0) the formulation is simply not applicable
(`covers`) and the other formulations run; `unavailable_reason()` says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import files, machine, paths

SOURCE = Path(__file__).resolve().parent / "native" / "amx_conv.cc"
FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-mavx512f", "-mavx512bw", "-mavx512bf16",
         "-mamx-tile", "-mamx-bf16")
TARGETS = {"forward": ("cxr_amx_conv_forward", "CxrAmxConvForward"),
           "weight_grad": ("cxr_amx_conv_weight_grad", "CxrAmxConvWeightGrad")}
NAME = "amx"  # the formulation's name in fwd.FORMULATIONS and wgrad.FORMULATIONS
# Operand bytes of a panel, the rows a worker takes at a time: forward, the panel's input rows
# (each 32-wide slice of the kernel passes over them in L2, so a larger panel reads the kernel
# fewer times: VGG16's 512-channel kernels are 2.4-4.7 MB); weight gradient, both operands.
FORWARD_PANEL_BYTES = 1 << 19
WGRAD_PANEL_BYTES = 1 << 20


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def library_path(compiler: str) -> Path:
  digest = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS)).encode()
                          + jax.__version__.encode()).hexdigest()[:16]
  return paths.cache_dir() / "native" / f"amx_conv-{digest}.so"


def _build(compiler: str, target: Path) -> None:
  """Compiles the library into `target` (written atomically: concurrent builders never load half
  a file)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / target.name
    cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    files.write_atomic(target, out.read_bytes())


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the custom calls once per process; None, or why not."""
  if os.environ.get("CXR_JAX_AMX", "1") == "0":
    return "CXR_JAX_AMX=0"
  if jax.default_backend() != "cpu":
    return f"backend {jax.default_backend()} (AMX is a CPU unit)"
  if not {"amx_tile", "amx_bf16"} <= set(machine.isa()):
    return f"no amx_bf16 on this CPU ({machine.cpu_model()})"
  compiler = _compiler()
  if compiler is None:
    return "no C++ compiler ($CXX, c++ or g++) to build ops/native/amx_conv.cc"
  target = library_path(compiler)
  try:
    if not target.exists():
      _build(compiler, target)
    lib = ctypes.cdll.LoadLibrary(str(target))
  except (OSError, RuntimeError) as e:
    logging.warning("AMX convolutions unavailable, using XLA's formulations: %s", e)
    return f"build or load failed: {e}"
  if lib.cxr_amx_enable() != 1:
    return "the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
  for name, symbol in TARGETS.values():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return None


def unavailable_reason() -> str | None:
  """None where the AMX formulations run here, else the reason they do not."""
  return _load()


def available() -> bool:
  return _load() is None


def covers(name: str, kernel_shape, dtype) -> bool:
  """Whether formulation `name` computes this convolution here: every non-AMX one always; "amx"
  for bfloat16 with input and output channels in multiples of 32 where the tiles are usable."""
  if name != NAME:
    return True
  return (jnp.dtype(dtype) == jnp.bfloat16 and kernel_shape[2] % 32 == 0
          and kernel_shape[3] % 32 == 0 and available())


def _up32(n: int) -> int:
  """n rounded up to the tiles' 32 rows."""
  return -(-n // 32) * 32


def _geometry(x_shape, kernel_shape, padding):
  """Padded size (hp, wp), output size (ho, wo), flat rows (r0, rounded up to 32: r) and the tap
  offsets in flat rows."""
  n, h, w = x_shape[:3]
  kh, kw = kernel_shape[:2]
  (top, bottom), (left, right) = padding
  hp, wp = h + top + bottom, w + left + right
  r0 = n * hp * wp
  offsets = np.array([i * wp + j for i in range(kh) for j in range(kw)], np.int64)
  return hp, wp, hp - kh + 1, wp - kw + 1, r0, _up32(r0), offsets


def _flat(x, padding, rows: int):
  """x padded spatially and flattened to [rows, C] (zero rows appended: windows past the last
  image read zeros, and only feed rows that are cropped)."""
  xf = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),)).reshape(-1, x.shape[-1])
  return jnp.pad(xf, ((0, rows - xf.shape[0]), (0, 0)))


def _check(kernel_shape, dtype) -> None:
  """The native code reads bfloat16 in 32-channel blocks: anything else would be read wrong."""
  if not covers(NAME, kernel_shape, dtype):
    raise ValueError(f"the AMX convolution does not cover kernel {tuple(kernel_shape)} in "
                     f"{jnp.dtype(dtype).name} here (bfloat16, channels in multiples of 32, and "
                     f"{unavailable_reason() or 'AMX available'})")


def forward(x, w, padding):
  """The convolution (module doc), bf16 products, float32 sums, output in x.dtype."""
  _check(w.shape, x.dtype)
  n, _, _, c = x.shape
  kh, kw, _, o = w.shape
  hp, wp, ho, wo, r0, r, offsets = _geometry(x.shape, w.shape, padding)
  xf = _flat(x, padding, r + int(offsets[-1]))
  # B tiles: per tap, 16 output channels x 32 input channels as 16 rows of (channel pairs x 16).
  packed = w.reshape(kh * kw, c // 32, 16, 2, o // 16, 16).transpose(0, 4, 1, 2, 5, 3)
  # At least one panel per core, so small maps (batch 1 at 14-28 px) still use every core.
  per_core = -(-r // (os.cpu_count() or 1))
  panel = max(32, min(FORWARD_PANEL_BYTES // (2 * c), _up32(per_core)) // 32 * 32)
  call = jax.ffi.ffi_call(TARGETS["forward"][0], jax.ShapeDtypeStruct((r, o), x.dtype),
                          vmap_method="sequential")
  y = call(xf, packed.astype(x.dtype), offsets=offsets, panel=np.int64(panel))
  return y[:r0].reshape(n, hp, wp, o)[:, :ho, :wo]


def weight_grad(x, dy, kernel_shape, padding, dtype):
  """dw of `forward` for output gradient dy, float32 sums cast to `dtype`."""
  _check(kernel_shape, x.dtype)
  c, o = kernel_shape[2:]
  hp, wp, ho, wo, r0, _, offsets = _geometry(x.shape, kernel_shape, padding)
  halo = _up32(int(offsets[-1]))
  # Panels of flat rows sized so a panel's operands (channels x (panel + halo), panel x outputs)
  # fill about WGRAD_PANEL_BYTES, at least the halo (else the halo copy outweighs the panel).
  panel = max(halo, 32, WGRAD_PANEL_BYTES // (2 * (c + o)) - halo * c // (c + o)) // 32 * 32
  panels = -(-r0 // panel)
  xf = _flat(x, padding, (panels + 1) * panel)
  # A tiles: per panel, its rows and the next `halo`, channels first ([panels, C, panel + halo]).
  rows = xf[:panels * panel].reshape(panels, panel, c)
  after = xf[panel:].reshape(panels, panel, c)[:, :halo]
  xb = jnp.concatenate([rows, after], axis=1).transpose(0, 2, 1)
  # B tiles: dy on the same flat grid (zero where rows are cropped), row pairs interleaved.
  d = jnp.pad(dy.astype(x.dtype), ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(r0, o)
  r = panels * panel
  dyv = jnp.pad(d, ((0, r - r0), (0, 0))).reshape(r // 2, 2, o).transpose(0, 2, 1)
  call = jax.ffi.ffi_call(TARGETS["weight_grad"][0],
                          jax.ShapeDtypeStruct((len(offsets), c, o), jnp.float32),
                          vmap_method="sequential")
  g = call(xb, dyv, offsets=offsets)
  return g.reshape(kernel_shape).astype(dtype)
