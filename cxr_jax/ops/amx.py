"""Stride-1 bfloat16 convolutions on Intel AMX tiles, through an XLA FFI custom call.

XLA:CPU in jaxlib 0.10.2 runs a bfloat16 convolution at its float32 speed (120-230 GFLOP/s on a
2-core AMX Xeon, where its bf16 matrix product reaches 1.5 TFLOP/s and PyTorch's oneDNN
convolution ~1 TFLOP/s), and no XLA flag routes it to the AMX units (benchmarks/results/
bf16_step_profile_xeon_amx.md). `native/amx_conv.cc` runs the same sums on the tiles: an implicit
matrix product over the flat padded input (each tap's operand is a contiguous row range, loaded in
place), bfloat16 products with float32 accumulation as every bf16 product in cxr_jax. The kernel
pads, crops, lays out and packs its operands itself, per L2-sized panel of rows: left to XLA,
those passes and the bias gradient's reductions took more of a step than the products
(bf16_step_profile_xeon_amx_after.md has the step since).

  forward      x [N, H, W, C] * w [KH, KW, C, O] (+ bias, then the ReLU, on the float32 sums)
               -> [N, H', W', O] (x.dtype), also the input
               gradient (`fwd.on_transposed_kernel`: dy and the forward kernel, flipped and
               swapped as the kernel packs it)
  weight_and_bias_grad  dw [KH, KW, C, O] and db [O] from x and dy, float32 sums
               (`wgrad.FORMULATIONS["amx"]` without db; `wgrad.weight_and_bias_grad` with it)

Covered: bfloat16, O a multiple of 32, and C a multiple of 32 (VGG16's layers but the first,
DenseNet121's 3x3 convolutions) or so few channels that every tap's fit 64 columns (VGG16's
first layer, 27: a 1x1 convolution over its im2col rows, built in the kernel), on a CPU with
amx_bf16 whose kernel lets the process use the tiles. The library is compiled on first use with
the system's C++ compiler (`$CXX`, else c++ / g++) against jaxlib's FFI headers into
`<cache>/native/`, keyed by the source, flags and jaxlib version. Anywhere that fails (no AMX, no
compiler, another backend, CXR_JAX_AMX=0) the formulation is simply not applicable (`covers`)
and the other formulations run; `unavailable_reason()` says why.

The same kernel, its products on AVX512-BF16's vector units instead of the tiles, is a second
formulation, VECTOR_NAME ("avx512bf16"): for CPUs with avx512_bf16 and no AMX (AMD EPYC Zen 4,
Intel Cooper Lake), where XLA's bf16 convolution also runs at float32's speed. The same operands,
layouts, epilogue and tests. The fixed rules take it on such CPUs where it was measured faster
(`vector_rule`); it is also taken where measured (`conv_impl="fast_mm"`) or named
(`conv_impl="avx512bf16"` for every covered layer, `"fwd_avx512bf16"`, `"wgrad_avx512bf16"`).

A third, WINOGRAD_NAME ("wino2_avx512bf16"), is Winograd F(2x2, 3x3) on the same vector units
with every transform in the native code (`winograd_forward`, `winograd_weight_and_bias_grad`):
the products' operands are the values `winograd`'s XLA form rounds to bfloat16 (the forward
bit for bit so far, the weight gradient within float32 summation order), 2.25x fewer products
than the direct sums, and none of the float32 transform and convert passes that took ~30 % of a
bf16 step in XLA. For 3x3 kernels with both channel counts in multiples of 32; the rules take it
on AVX512-BF16 CPUs without AMX (`winograd_rule`). The same Winograd with its 16 products on the
AMX tiles is WINOGRAD_AMX_NAME ("wino2_amx"): tested, not yet timed on an AMX CPU, so no rule takes
it; measurement does (`conv_impl="fast_mm"`), or a name (`"wino2_amx"`, `"fwd_wino2_amx"`,
`"wgrad_wino2_amx"`).

Every call takes `units`: NAME (the tiles), VECTOR_NAME (the vector units) or EMULATED_NAME
("amx_emulated"): the tiles' code path with each tile instruction done in software on the vector
units, so that its layouts, strides and loop bounds are tested on any CPU with avx512_bf16 (for
tests; slow, and no formulation of the rules or measurements).
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
FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-mavx512f", "-mavx512bw", "-mavx512vl",
         "-mavx512bf16", "-mamx-tile", "-mamx-bf16")
NAME = "amx"  # the formulation's name in fwd.FORMULATIONS and wgrad.FORMULATIONS
VECTOR_NAME = "avx512bf16"  # the same kernel on AVX512-BF16's vector units (module doc)
NAMES = (NAME, VECTOR_NAME)
# The tiles' code path, each tile instruction emulated on the vector units: a `units`, for tests.
EMULATED_NAME = "amx_emulated"
UNITS = (*NAMES, EMULATED_NAME)  # what every call's `units` may be
# Winograd F(2x2, 3x3), its transforms in the kernel (`winograd_forward`,
# `winograd_weight_and_bias_grad`), its products on the vector units or the tiles.
WINOGRAD_NAME = "wino2_avx512bf16"
WINOGRAD_AMX_NAME = "wino2_amx"
WINOGRAD = {WINOGRAD_NAME: VECTOR_NAME, WINOGRAD_AMX_NAME: NAME}  # formulation -> its units
NATIVE = (*NAMES, *WINOGRAD)  # every formulation of the native library (bfloat16 only)
# (units, call) -> (XLA target name, the library's handler symbol): the native code defines each
# call for every units (`CXR_HANDLERS`).
TARGETS = {(units, call): (f"{target}_{suffix}", f"{symbol}{suffix_symbol}")
           for units, (target, symbol) in {NAME: ("cxr_amx", "CxrAmx"),
                                           VECTOR_NAME: ("cxr_bf16", "CxrBf16"),
                                           EMULATED_NAME: ("cxr_amx_emulated", "CxrAmxEmulated")}.items()
           for call, (suffix, suffix_symbol) in {
               "forward": ("conv_forward", "ConvForward"),
               "weight_grad": ("conv_weight_grad", "ConvWeightGrad"),
               "winograd_forward": ("winograd_forward", "WinogradForward"),
               "winograd_weight_grad": ("winograd_weight_grad", "WinogradWeightGrad")}.items()}
# Operand bytes of a panel, the rows a worker takes at a time: forward, the panel's input rows
# (each 32-wide slice of the kernel passes over them in L2, so a larger panel reads the kernel
# fewer times: VGG16's 512-channel kernels are 2.4-4.7 MB); weight gradient, both operands.
FORWARD_PANEL_BYTES = 1 << 19
WGRAD_PANEL_BYTES = 1 << 20
# Bytes of a Winograd unit's transformed input tiles (16 x tiles x C bf16), which stay in L2 while
# every output block passes over them.
WINOGRAD_PANEL_BYTES = 1 << 19
IM2COL_COLUMNS = 64  # the most im2col columns (taps x channels) of a layer with C % 32 != 0


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


_LIBRARY: dict = {}  # the loaded library, once `_library` has loaded it


@functools.cache
def _library() -> str | None:
  """Builds, loads and registers the custom calls once per process (every formulation's code needs
  AVX-512 with BF16 to run); None, or why not."""
  if os.environ.get("CXR_JAX_AMX", "1") == "0":
    return "CXR_JAX_AMX=0"
  if jax.default_backend() != "cpu":
    return f"backend {jax.default_backend()} (AMX and AVX512-BF16 are CPU units)"
  if not {"avx512bw", "avx512vl", "avx512_bf16"} <= set(machine.isa()):
    return f"no avx512_bf16 on this CPU ({machine.cpu_model()})"
  if "lib" in _LIBRARY:  # registered by an earlier call (before a cache_clear): XLA takes each
    return None          # target once per process, and another build's handlers would clash
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
  for name, symbol in TARGETS.values():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  _LIBRARY["lib"] = lib
  return None


@functools.cache
def _load() -> str | None:
  """The library, and the tiles usable by this process; None, or why not."""
  if why := _library():
    return why
  if not {"amx_tile", "amx_bf16"} <= set(machine.isa()):
    return f"no amx_bf16 on this CPU ({machine.cpu_model()})"
  if _LIBRARY["lib"].cxr_amx_enable() != 1:
    return "the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
  return None


def unavailable_reason(name: str = NAME) -> str | None:
  """None where formulation or units `name` (NATIVE, UNITS) runs here, else the reason it does not:
  the tiles need AMX, the rest (the emulated tiles too) AVX512-BF16."""
  return _load() if WINOGRAD.get(name, name) == NAME else _library()


def available(name: str = NAME) -> bool:
  return unavailable_reason(name) is None


def _im2col(kernel_shape) -> bool:
  """Whether the layer runs on im2col rows (channels not a multiple of the tiles' 32)."""
  return kernel_shape[2] % 32 != 0


def _columns(kernel_shape) -> int:
  """Operand columns per flat row: C, or every tap's channels rounded up to 32 (`_im2col`)."""
  kh, kw, c = kernel_shape[:3]
  return _up32(kh * kw * c) if _im2col(kernel_shape) else c


def covers(name: str, kernel_shape, dtype) -> bool:
  """Whether formulation `name` computes this convolution here: every one but this module's
  always; the direct sums (UNITS) for bfloat16 with output channels in multiples of 32 and input
  channels too, or few enough for im2col rows of at most IM2COL_COLUMNS, where their units are
  usable; Winograd (WINOGRAD) for bfloat16 3x3 kernels with both channel counts in multiples of 32,
  where its units are."""
  if name in WINOGRAD:
    return _covers(WINOGRAD[name], kernel_shape, dtype, winograd=True)
  return name not in UNITS or _covers(name, kernel_shape, dtype, winograd=False)


def _covers(units: str, kernel_shape, dtype, winograd: bool) -> bool:
  """`covers` for the direct sums or (`winograd`) Winograd F(2x2) on `units` (UNITS). The shape
  first: a shape no units covers never builds the library."""
  if winograd:
    shape = tuple(kernel_shape[:2]) == (3, 3) and kernel_shape[2] % 32 == 0
  else:
    shape = _columns(kernel_shape) <= max(IM2COL_COLUMNS, kernel_shape[2])
  return (jnp.dtype(dtype) == jnp.bfloat16 and kernel_shape[3] % 32 == 0 and shape
          and available(units))


def vector_rule(kernel_shape, dtype) -> bool:
  """Whether the fixed rules (`fwd.rule`, `wgrad.rule`) may take the vector units (VECTOR_NAME)
  for a layer they cover: on a CPU with avx512_bf16 and no AMX, the kind they were measured on
  (2-core AMD EPYC, `benchmarks/results/conv_layers_{224,128}_bf16_epyc_avx512bf16.md`: VGG16's
  layers on 56-224 px maps, batch 8, ran at 310-405 GFLOP/s, 67-87 % of the VDPBF16PS register
  loop's 467, where XLA's bf16 convolution runs at its float32 speed). The rules leave Winograd's
  bf16 forms the 3x3 layers where its fewer products won (forward at 8-56 px, weight gradient at
  8-32 px)."""
  return machine.isa_level() == "avx512_bf16" and covers(VECTOR_NAME, kernel_shape, dtype)


# The fewest 2x2 output tiles per call for which the fixed rules take WINOGRAD_NAME
# (`winograd_rule`), forward, input and weight gradients alike.
WINOGRAD_TILES = 128


def _tiles(n: int, ho: int, wo: int) -> int:
  """Winograd F(2x2)'s output tiles: n images of an ho x wo output in 2x2 blocks."""
  return n * -(-ho // 2) * -(-wo // 2)


def winograd_rule(x_shape, kernel_shape, dtype) -> bool:
  """Whether the fixed rules take the native Winograd (WINOGRAD_NAME) for a layer: on the CPUs
  `vector_rule` is for, 3x3 layers it covers with WINOGRAD_TILES output tiles or more (batch x the
  map's 2x2 tiles, padding 1). Measured on VGG16's layers at 224 and 128 px (2-core AMD EPYC,
  benchmarks/results/conv_layers_{224,128}_bf16_epyc_avx512bf16_winograd.md):
  - forward and input gradient: 1.1-1.8x the best other form at batch 8 on 16-224 px maps; 0.8x
    alone at 8 px (128 tiles) and at batch 1 on 8-28 px maps (16-196 tiles), where a call's fixed
    costs (the kernel's transform, every unit reading all of it) weigh most; batch 1 from 32 px
    (256 tiles) 1.0-1.3x. In the training step the 8 px layers' input gradients still gain (XLA's
    form transposes the kernel and masks dy in passes of its own): a 128 px step 1.17x faster at
    FT2, 1.09x at FT5 with 128 tiles than with 256, the forward-only step level
    (benchmarks/results/winograd_tiles_128px_epyc_avx512bf16.md).
  - weight gradient: 1.3-2.1x the best other form on every 3x3 layer at batch 8 (8-224 px maps,
    128-100,352 tiles; 128 the fewest measured)."""
  return (machine.isa_level() == "avx512_bf16" and covers(WINOGRAD_NAME, kernel_shape, dtype)
          and _tiles(*x_shape[:3]) >= WINOGRAD_TILES)


def native_rule(x_shape, kernel_shape, dtype) -> str | None:
  """The native formulation the fixed rules (`fwd.rule`, `wgrad.rule`) take before their own, or
  None: the AMX tiles (NAME) wherever they cover; on a CPU with avx512_bf16 and no AMX, the native
  Winograd (WINOGRAD_NAME, `winograd_rule`), then the vector units (VECTOR_NAME, `vector_rule`),
  which each rule may still leave to XLA's Winograd bf16 forms where those measured faster."""
  if covers(NAME, kernel_shape, dtype):
    return NAME
  if winograd_rule(x_shape, kernel_shape, dtype):
    return WINOGRAD_NAME
  return VECTOR_NAME if vector_rule(kernel_shape, dtype) else None


def _up32(n: int) -> int:
  """n rounded up to the tiles' 32 rows."""
  return -(-n // 32) * 32


def _geometry(x_shape, kernel_shape, padding) -> tuple[dict, int, tuple[int, int]]:
  """The flat padded grid the native code walks (its `Grid`): padding (top, left), padded size
  (hp, wp), the tap offsets in flat rows and whether rows are im2col'd; also the flat row count
  and the output size."""
  n, h, w = x_shape[:3]
  kh, kw = kernel_shape[:2]
  (top, bottom), (left, right) = padding
  hp, wp = h + top + bottom, w + left + right
  offsets = np.array([i * wp + j for i in range(kh) for j in range(kw)], np.int64)
  attrs = {"offsets": offsets, "top": np.int64(top), "left": np.int64(left), "hp": np.int64(hp),
           "wp": np.int64(wp), "im2col": np.int64(_im2col(kernel_shape))}
  return attrs, n * hp * wp, (hp - kh + 1, wp - kw + 1)


def _panel(rows: int, most: int, step: int = 32) -> np.int64:
  """Rows per work unit, a multiple of `step` (the tiles' 32 rows; Winograd's 8 tiles): at most
  `most` (what fits the cache), in a count of units that is a multiple of the cores (an odd count
  left one core idle for the last unit: 3 units on 2 cores run at 2/3 speed), and never fewer
  units than cores while each can hold `step` rows."""
  cores = os.cpu_count() or 1
  units = -(-rows // max(step, most))
  units = min(-(-units // cores) * cores, -(-rows // step))
  per_unit = -(-rows // units)
  return np.int64(-(-per_unit // step) * step)


def flips(kernel_shape) -> bool:
  """Whether `forward(..., flip=True)` takes the forward kernel of this shape: the input gradient's
  input channels (its O) in whole 32-channel blocks, not on im2col rows."""
  return not _im2col(kernel_shape[:2] + (kernel_shape[3], kernel_shape[2]))


def _check(units: str, kernel_shape, dtype, winograd: bool = False) -> None:
  """The native code reads bfloat16 in 32-channel blocks: anything else would be read wrong.
  `units` (UNITS) runs the direct sums, or with `winograd` Winograd F(2x2)."""
  if units not in UNITS:
    raise ValueError(f"units {units!r} is not one of {UNITS}")
  if not _covers(units, kernel_shape, dtype, winograd):
    needs = ("3x3, channels in multiples of 32" if winograd else
             f"output channels in multiples of 32, input channels too or at most {IM2COL_COLUMNS} "
             "im2col columns")
    kind = "Winograd" if winograd else "direct"
    raise ValueError(f"the {kind} convolution on units {units} does not cover kernel "
                     f"{tuple(kernel_shape)} in {jnp.dtype(dtype).name} here (bfloat16, {needs}, "
                     f"and {unavailable_reason(units) or 'its units available'})")


def relu_masked(v, mask):
  """v where mask > 0, else 0 (v itself without a mask): the ReLU's gradient applied to dy, in XLA,
  what `forward` and `weight_and_bias_grad` do to it in the kernel (for the other formulations)."""
  return v if mask is None else jnp.where(mask > 0, v, jnp.zeros_like(v))


def _mask_of(mask, like) -> tuple:
  """(the mask operand, its `masked` attribute): `like` itself, unread, where there is none."""
  if mask is None:
    return like, np.int64(0)
  if mask.shape != like.shape:
    raise ValueError(f"the ReLU mask {mask.shape} must have the masked operand's shape {like.shape}")
  return mask.astype(like.dtype), np.int64(1)


def forward(x, w, padding, flip: bool = False, bias=None, relu: bool = False, mask=None,
            units: str = NAME):
  """The convolution (module doc), bf16 products, float32 sums, output in x.dtype. With `flip`, w
  is a forward kernel [KH, KW, O, C] and the convolution is the input gradient's: taps reversed,
  input and output swapped (`fwd.transposed_kernel(w)`, which the kernel applies as it packs w
  instead of XLA transposing it first). `bias` [O] is added to the float32 sums, and with `relu`
  max(0, .) taken, before the output's one rounding (`conv.conv2d`'s fused bias and ReLU). With
  `mask` (x's shape), x counts only where mask > 0: the input gradient of a layer whose ReLU output
  is `mask`, its dy masked as the kernel gathers it (`jnp.where(mask > 0, x, 0)`, exactly).
  `units`: NAME (the AMX tiles), VECTOR_NAME (AVX512-BF16's vector units) or EMULATED_NAME (the
  tiles' code, emulated: for tests)."""
  kernel_shape = w.shape[:2] + (w.shape[3], w.shape[2]) if flip else w.shape
  _check(units, kernel_shape, x.dtype)
  if flip and not flips(w.shape):
    raise ValueError(f"the AMX kernel flips whole 32-channel blocks: not kernel {tuple(w.shape)}")
  if mask is not None and _im2col(kernel_shape):
    raise ValueError(f"the AMX kernel masks whole 32-channel blocks: not kernel {tuple(kernel_shape)}")
  keep, masked = _mask_of(mask, x)
  attrs, rows, (ho, wo) = _geometry(x.shape, kernel_shape, padding)
  call = jax.ffi.ffi_call(TARGETS[units, "forward"][0],
                          jax.ShapeDtypeStruct((x.shape[0], ho, wo, kernel_shape[3]), x.dtype),
                          vmap_method="sequential")
  panel = _panel(rows, FORWARD_PANEL_BYTES // (2 * _columns(kernel_shape)))
  bias = jnp.zeros((kernel_shape[3],), jnp.float32) if bias is None else bias.astype(jnp.float32)
  return call(x, w.astype(x.dtype), bias, keep, panel=panel, flip=np.int64(flip),
              relu=np.int64(relu), masked=masked, **attrs)


def winograd_forward(x, w, padding, flip: bool = False, bias=None, relu: bool = False, mask=None,
                     units: str = VECTOR_NAME):
  """`forward`'s convolution (3x3 kernels) as Winograd F(2x2, 3x3): 2.25x fewer products, the same
  values in them as `winograd.forward(m=2)`'s bfloat16 ones (G w G^T and each input tile's B^T d B
  in float32, rounded to bfloat16, both in the native code), float32 sums, then the output
  transform, bias and ReLU on them before the one rounding to bfloat16. `flip`, `bias`, `relu`,
  `mask` and `units` as `forward`'s (the vector units by default: WINOGRAD_NAME; the tiles are
  WINOGRAD_AMX_NAME)."""
  kernel_shape = w.shape[:2] + (w.shape[3], w.shape[2]) if flip else w.shape
  _check(units, kernel_shape, x.dtype, winograd=True)
  keep, masked = _mask_of(mask, x)
  (top, bottom), (left, right) = padding
  ho, wo = x.shape[1] + top + bottom - 2, x.shape[2] + left + right - 2
  o = kernel_shape[3]
  # A unit's tiles in strips of 8 (the vector units' registers) or 32 (the tiles' rows).
  step = 8 if units == VECTOR_NAME else 32
  panel = _panel(_tiles(x.shape[0], ho, wo), WINOGRAD_PANEL_BYTES // (16 * 2 * x.shape[3]), step=step)
  call = jax.ffi.ffi_call(TARGETS[units, "winograd_forward"][0],
                          jax.ShapeDtypeStruct((x.shape[0], ho, wo, o), x.dtype),
                          vmap_method="sequential")
  bias = jnp.zeros((o,), jnp.float32) if bias is None else bias.astype(jnp.float32)
  return call(x, w.astype(x.dtype), bias, keep, panel=panel, top=np.int64(top), left=np.int64(left),
              flip=np.int64(flip), relu=np.int64(relu), masked=masked)


def winograd_weight_and_bias_grad(x, dy, kernel_shape, padding, dtype, bias_dtype, mask=None,
                                  units: str = VECTOR_NAME):
  """(dw, db) of `winograd_forward` (plus a bias) for output gradient dy: Winograd's adjoint with the
  same rounded operands as `winograd.weight_grad(m=2)`'s bfloat16 products (B^T d B of the input
  tiles, A dy A^T of dy's 2x2 blocks), float32 sums, G^T dU G in float32, cast to `dtype`; db the
  float32 sum of dy, cast to `bias_dtype`. With `mask` (dy's shape, the layer's ReLU output), dy
  counts only where mask > 0, applied as the kernel reads dy. `units` as `winograd_forward`'s."""
  _check(units, kernel_shape, x.dtype, winograd=True)
  dy = dy.astype(x.dtype)
  keep, masked = _mask_of(mask, dy)
  (top, _), (left, _) = padding
  c, o = kernel_shape[2:]
  # A unit's panel: its 4 positions' V [C, panel] and dM [panel/2, O, 2] in about
  # 2 WINOGRAD_PANEL_BYTES, whole 32-tile transposes, no more than the tiles.
  most = max(32, WINOGRAD_PANEL_BYTES // (4 * (c + o)) // 32 * 32)
  panel = np.int64(min(most, _up32(_tiles(*dy.shape[:3]))))
  call = jax.ffi.ffi_call(TARGETS[units, "winograd_weight_grad"][0],
                          (jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32),
                           jax.ShapeDtypeStruct((o,), jnp.float32)),
                          vmap_method="sequential")
  # Units are (row of tile positions, group of panels): 4 per group, a group per 4 cores.
  groups = np.int64(max(1, (os.cpu_count() or 1) // 4))
  dw, db = call(x, dy, keep, panel=panel, groups=groups, top=np.int64(top), left=np.int64(left),
                masked=masked)
  return dw.astype(dtype), db.astype(bias_dtype)


def winograd_weight_grad(x, dy, kernel_shape, padding, dtype, units: str = VECTOR_NAME):
  """dw of `winograd_forward` for output gradient dy (`winograd_weight_and_bias_grad`'s)."""
  return winograd_weight_and_bias_grad(x, dy, kernel_shape, padding, dtype, dtype, units=units)[0]


def weight_and_bias_grad(x, dy, kernel_shape, padding, dtype, bias_dtype, mask=None,
                         units: str = NAME):
  """(dw, db) of `forward` plus a bias for output gradient dy: float32 sums cast to `dtype` and
  `bias_dtype` (db is summed on the pass that lays dy out for the tiles, so it costs no pass of
  its own). With `mask` (dy's shape, the layer's ReLU output), dy counts only where mask > 0.
  `units` as `forward`'s."""
  _check(units, kernel_shape, x.dtype)
  o = kernel_shape[3]
  c = _columns(kernel_shape)
  attrs, rows, _ = _geometry(x.shape, kernel_shape, padding)
  taps = 1 if _im2col(kernel_shape) else len(attrs["offsets"])
  halo = 0 if _im2col(kernel_shape) else _up32(int(attrs["offsets"][-1]))
  # A unit's operands (channels x (panel + halo), panel x outputs) fill about WGRAD_PANEL_BYTES;
  # at least the halo (else gathering the halo outweighs the panel).
  panel = _panel(rows, max(halo, WGRAD_PANEL_BYTES // (2 * (c + o)) - halo * c // (c + o)))
  call = jax.ffi.ffi_call(TARGETS[units, "weight_grad"][0],
                          (jax.ShapeDtypeStruct((taps, c, o), jnp.float32),
                           jax.ShapeDtypeStruct((o,), jnp.float32)),
                          vmap_method="sequential")
  dy = dy.astype(x.dtype)
  keep, masked = _mask_of(mask, dy)
  dw, db = call(x, dy, keep, panel=panel, masked=masked, **attrs)
  dw = dw.reshape(-1, o)[:int(np.prod(kernel_shape[:3]))]  # im2col: the taps' rows only
  return dw.reshape(kernel_shape).astype(dtype), db.astype(bias_dtype)


def weight_grad(x, dy, kernel_shape, padding, dtype, units: str = NAME):
  """dw of `forward` for output gradient dy, float32 sums cast to `dtype`."""
  return weight_and_bias_grad(x, dy, kernel_shape, padding, dtype, dtype, units=units)[0]
