// Stride-1 convolutions on Intel AMX tiles (bfloat16 products, float32 accumulation), as XLA FFI
// custom calls for cxr_jax.ops.amx. XLA:CPU (jaxlib 0.10.2) runs a bfloat16 convolution at its
// float32 speed; these run the same sums on the AMX units.
//
// The convolution is an implicit matrix product on the "flat" padded input: with the input padded
// and flattened to rows r = (n, y, x) of a [R, C] matrix (padded width Wp), the output at row r is
//     y[r, o] = sum_t sum_c xf[r + off[t], c] * w[t, c, o],   off[t] = i * Wp + j for tap (i, j),
// so every tap's operand is a contiguous row range of xf: an AMX tile loads it in place (no im2col).
// Rows whose window crosses an image's padded edge are junk; the caller crops them. The weight
// gradient is the same sum read the other way,
//     dw[t, c, o] = sum_r xf[r + off[t], c] * dy[r, o],
// with xf cut into panels of rows (plus a halo) and transposed per panel ([panels, C, P + halo])
// and dy in the tiles' pair-interleaved layout ([R/2, O, 2]).
//
// Tiles: 4 accumulators (a 32 x 32 block of the output), 2 A tiles and 2 B tiles (16 x 32 bf16).
// Work is split over XLA's intra-op thread pool; the caller's thread takes a share too.

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void ConfigureTiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Runs fn(unit) for every unit in [0, units), on this thread and up to (pool threads - 1) tasks
// of XLA's pool, each taking the next unit until none is left. The caller never waits for a task
// that has not started: XLA may run two custom calls at once on a 2-thread pool, each holding a
// thread, and waiting for the other's queued task would deadlock. A task that starts late finds
// no unit left and ends (its counters live on the heap: it may outlive this call); the caller
// waits only for tasks that hold a unit. Each worker sets up the tiles before its first unit.
struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};
};

void Work(Shared& s, int64_t units, const std::function<void(int64_t)>& fn) {
  bool tiles = false;
  for (int64_t u; (u = s.next.fetch_add(1)) < units;) {
    if (!tiles) {
      ConfigureTiles();
      tiles = true;
    }
    fn(u);
  }
  if (tiles) _tile_release();
}

void Parallel(ffi::ThreadPool& pool, int64_t units, const std::function<void(int64_t)>& fn) {
  auto shared = std::make_shared<Shared>();
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), units);
  for (int64_t k = 1; k < workers; ++k) {
    pool.Schedule([shared, units, &fn] {
      // Counted before taking a unit: the caller returns only when every unit is taken and no
      // task holds one, so fn is alive whenever a task calls it.
      shared->active.fetch_add(1);
      Work(*shared, units, fn);
      shared->active.fetch_sub(1);
    });
  }
  Work(*shared, units, fn);
  while (shared->active.load() > 0) std::this_thread::yield();
}

// 32 x 32 float32 block -> bfloat16 rows of y (row stride o_total).
void StoreBf16(const float* block, uint16_t* y, int64_t o_total) {
  for (int r = 0; r < 32; ++r) {
    __m512 lo = _mm512_loadu_ps(block + r * 32);
    __m512 hi = _mm512_loadu_ps(block + r * 32 + 16);
    __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(reinterpret_cast<void*>(y + r * o_total), (__m512i)packed);
  }
}

// y [R, O] (R % 32 == 0) from xf [rows >= R + max(off), C] and packed w [T, O/16, C/32, 16, 32].
// Units: panels of `panel` output rows; in a panel, each 32-wide slice of the kernel passes over
// every 32-row block (the panel's input rows and the slice stay in L2).
ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer xf, ffi::AnyBuffer wp,
                   ffi::Span<const int64_t> offsets, int64_t panel,
                   ffi::Result<ffi::AnyBuffer> y) {
  const int64_t c = xf.dimensions()[1];
  const int64_t r_total = y->dimensions()[0], o = y->dimensions()[1];
  const int64_t taps = static_cast<int64_t>(offsets.size());
  if (c % 32 || o % 32 || r_total % 32 || panel % 32 || panel <= 0)
    return ffi::Error::InvalidArgument("amx_conv_forward: C, O, R and panel must be multiples of 32");
  const uint16_t* x = reinterpret_cast<const uint16_t*>(xf.untyped_data());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(wp.untyped_data());
  uint16_t* out = reinterpret_cast<uint16_t*>(y->untyped_data());
  const int64_t cc = c / 32, panels = (r_total + panel - 1) / panel;
  const int64_t tile_w = 16 * 32;  // one packed B tile, in bf16 elements
  Parallel(pool, panels, [&](int64_t p) {
    alignas(64) float block[32 * 32];
    const int64_t r0 = p * panel, r1 = std::min(r_total, r0 + panel);
    for (int64_t ob = 0; ob < o / 32; ++ob) {
      for (int64_t r = r0; r < r1; r += 32) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int64_t t = 0; t < taps; ++t) {
          const uint16_t* a = x + (r + offsets[t]) * c;
          const uint16_t* b = w + ((t * (o / 16) + 2 * ob) * cc) * tile_w;
          for (int64_t k = 0; k < cc; ++k) {
            _tile_loadd(4, a + k * 32, c * 2);
            _tile_loadd(5, a + 16 * c + k * 32, c * 2);
            _tile_loadd(6, b + k * tile_w, 64);
            _tile_loadd(7, b + (cc + k) * tile_w, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, block, 128);
        _tile_stored(1, block + 16, 128);
        _tile_stored(2, block + 16 * 32, 128);
        _tile_stored(3, block + 16 * 32 + 16, 128);
        StoreBf16(block, out + r * o + ob * 32, o);
      }
    }
  });
  return ffi::Error::Success();
}

// dw [T, C, O] (float32) from xb [panels, C, P + halo] and dyv [R/2, O, 2] (R = panels * P).
// xb holds, per panel of P flat rows, those rows and the next `halo` (>= every tap offset) with
// channels first: an A tile (16 channels x 32 rows) then spans 16 rows (P + halo) apart, not the
// whole input apart, and a panel's operands stay in L2 while every item passes over them. Work
// items: (tap, 32-channel block, 32-output block), cut into one contiguous group per pool thread
// (the units); each item owns its blocks of dw, so no sums across workers (accumulators reloaded
// from dw per panel).
ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::AnyBuffer xb, ffi::AnyBuffer dyv,
                      ffi::Span<const int64_t> offsets, ffi::Result<ffi::AnyBuffer> dw) {
  const int64_t panels = xb.dimensions()[0], c = xb.dimensions()[1], width = xb.dimensions()[2];
  const int64_t r_total = 2 * dyv.dimensions()[0], o = dyv.dimensions()[1];
  const int64_t taps = static_cast<int64_t>(offsets.size());
  const int64_t panel = r_total / std::max<int64_t>(1, panels);
  if (c % 32 || o % 32 || panel % 32 || panel * panels != r_total || width < panel)
    return ffi::Error::InvalidArgument(
        "amx_conv_weight_grad: C, O and the panel must be multiples of 32, R = panels x panel");
  for (int64_t t = 0; t < taps; ++t)
    if (offsets[t] < 0 || panel + offsets[t] > width)
      return ffi::Error::InvalidArgument("amx_conv_weight_grad: a tap offset exceeds the halo");
  const uint16_t* x = reinterpret_cast<const uint16_t*>(xb.untyped_data());
  const uint16_t* d = reinterpret_cast<const uint16_t*>(dyv.untyped_data());
  float* g = reinterpret_cast<float*>(dw->untyped_data());
  std::memset(g, 0, sizeof(float) * taps * c * o);
  const int64_t cb = c / 32, obs = o / 32, items = taps * cb * obs;
  const int64_t groups = std::min<int64_t>(items, std::max<int64_t>(1, pool.num_threads()));
  Parallel(pool, groups, [&](int64_t grp) {
    const int64_t first = grp * items / groups, last = (grp + 1) * items / groups;
    for (int64_t p = 0; p < panels; ++p) {
      const uint16_t* xp = x + p * c * width;
      const uint16_t* dp = d + p * (panel / 2) * o * 2;
      for (int64_t it = first; it < last; ++it) {
        const int64_t t = it / (cb * obs), ci = (it / obs) % cb, ob = it % obs;
        float* gb = g + (t * c + ci * 32) * o + ob * 32;
        _tile_loadd(0, gb, o * 4);
        _tile_loadd(1, gb + 16, o * 4);
        _tile_loadd(2, gb + 16 * o, o * 4);
        _tile_loadd(3, gb + 16 * o + 16, o * 4);
        const uint16_t* a = xp + ci * 32 * width + offsets[t];
        for (int64_t r = 0; r < panel; r += 32) {
          _tile_loadd(4, a + r, width * 2);
          _tile_loadd(5, a + 16 * width + r, width * 2);
          const uint16_t* b = dp + (r / 2) * o * 2 + ob * 64;
          _tile_loadd(6, b, o * 4);
          _tile_loadd(7, b + 32, o * 4);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, gb, o * 4);
        _tile_stored(1, gb + 16, o * 4);
        _tile_stored(2, gb + 16 * o, o * 4);
        _tile_stored(3, gb + 16 * o + 16, o * 4);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// 1 where this process may use the AMX tile registers (asks Linux for them), else 0.
extern "C" int cxr_amx_enable() {
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? 1 : 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrAmxConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<int64_t>("panel")
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CxrAmxConvWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Ret<ffi::AnyBuffer>());
