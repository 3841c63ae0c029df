// Stride-1 convolutions on Intel AMX tiles (bfloat16 products, float32 accumulation), as XLA FFI
// custom calls for cxr_jax.ops.amx. XLA:CPU (jaxlib 0.10.2) runs a bfloat16 convolution at its
// float32 speed; these run the same sums on the AMX units.
//
// The convolution is an implicit matrix product on the "flat" padded input: with the input padded
// and flattened to rows r = (n, y, x) of a [R, C] matrix (padded width Wp), the output at row r is
//     y[r, o] = sum_t sum_c xf[r + off[t], c] * w[t, c, o],   off[t] = i * Wp + j for tap (i, j),
// so every tap's operand is a contiguous row range of xf: an AMX tile loads it in place (no im2col).
// A layer with too few input channels for a tile (the image's 3) runs as a 1 x 1 convolution on
// its im2col rows instead (`Columns`).
// Rows whose window crosses an image's padded edge are junk and never stored. The weight gradient
// is the same sum read the other way,
//     dw[t, c, o] = sum_r xf[r + off[t], c] * dy[r, o],   db[o] = sum_r dy[r, o].
// Neither the padded input nor any other layout exists in memory: each worker gathers a panel of
// flat rows (and the `halo` rows its taps reach past it) from the unpadded NHWC input into its own
// buffer, zeros where the row is padding, and writes only the output's valid rows. The weight
// gradient's panel is transposed on the way (channels first, [C, panel + halo], so an A tile of
// 16 channels x 32 rows is 16 short rows) and dy interleaved in row pairs ([panel/2, O, 2], the
// B tile's layout): XLA's own transposes of these operands took longer than the products.
//
// Tiles: 4 accumulators (a 32 x 32 block of the output), 2 A tiles and 2 B tiles (16 x 32 bf16).
// Work is split over XLA's intra-op thread pool; the caller's thread takes a share too. Each call
// is also built for AVX512-BF16's vector units (`Strip`, for CPUs without AMX): the same operands,
// layouts and epilogue, the products VDPBF16PS instead of the tiles'. And each tile call is built a
// third time with every tile instruction done in software (`EmulatedTiles`): the tile code path,
// its layouts, strides and loop bounds, tested on any CPU with avx512_bf16 (slow; not a
// formulation the rules or measurements take).

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

// One packed B tile (`Pack`'s layout: 16 pair rows x 32), in bf16 elements.
constexpr int64_t kTileW = 16 * 32;

// Where a call's products run (module doc): the AMX tiles, AVX512-BF16's vector units, or the
// tiles' instructions emulated on the vector units.
enum class Units { kVector, kTiles, kEmulated };

// The tile registers as `ConfigureTiles` sets them up (8 tiles of 16 rows x 64 bytes), per thread,
// and the four instructions the kernels use, on the bytes Intel's definitions name: TDPBF16PS adds
// to each float32 row m of the destination, for each pair k in order, the products of A's row m's
// pair k with B's row k's 16 pairs; here one VDPBF16PS per (m, k), which like TDPBF16PS treats bf16
// denormals as zero (within a pair Intel's pseudo-code adds the two products in the other order:
// the tests' bounds hold for any order of the float32 sums). For the tests of the tile code path on
// CPUs without AMX, not for speed.
struct EmulatedTiles {
  static uint8_t (&Reg(int t))[16][64] {
    alignas(64) static thread_local uint8_t reg[8][16][64];
    return reg[t];
  }
  static void Zero(int t) { std::memset(Reg(t), 0, sizeof(Reg(t))); }
  static void Load(int t, const void* base, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(Reg(t)[r], static_cast<const uint8_t*>(base) + r * stride, 64);
  }
  static void Store(int t, void* base, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(static_cast<uint8_t*>(base) + r * stride, Reg(t)[r], 64);
  }
  static void Dot(int dst, int a, int b) {
    for (int m = 0; m < 16; ++m) {
      __m512 acc = _mm512_loadu_ps(Reg(dst)[m]);
      for (int k = 0; k < 16; ++k) {
        int32_t pair;
        std::memcpy(&pair, Reg(a)[m] + 4 * k, 4);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(pair),
                               (__m512bh)_mm512_loadu_si512(Reg(b)[k]));
      }
      _mm512_storeu_ps(Reg(dst)[m], acc);
    }
  }
};

// The tile instructions in a kernel templated on `Units kU`: the AMX instruction itself (its tile
// numbers must be literals: GCC's intrinsics paste them into the assembly), or with
// Units::kEmulated `EmulatedTiles`' (the choice made at compile time: the tiles' code is the same
// as with the intrinsics alone).
#define CXR_TILE_ZERO(t) \
  do { if constexpr (kU == Units::kEmulated) EmulatedTiles::Zero(t); else _tile_zero(t); } while (0)
#define CXR_TILE_LOAD(t, base, stride)                                   \
  do {                                                                   \
    if constexpr (kU == Units::kEmulated) EmulatedTiles::Load(t, base, stride); \
    else _tile_loadd(t, base, stride);                                   \
  } while (0)
#define CXR_TILE_STORE(t, base, stride)                                   \
  do {                                                                    \
    if constexpr (kU == Units::kEmulated) EmulatedTiles::Store(t, base, stride); \
    else _tile_stored(t, base, stride);                                   \
  } while (0)
// The four products of a 32 x 32 block: accumulators 0-3 += A tiles 4, 5 x B tiles 6, 7.
#define CXR_TILE_BLOCK_PRODUCTS()                                                      \
  do {                                                                                 \
    if constexpr (kU == Units::kEmulated) {                                            \
      EmulatedTiles::Dot(0, 4, 6); EmulatedTiles::Dot(1, 4, 7);                        \
      EmulatedTiles::Dot(2, 5, 6); EmulatedTiles::Dot(3, 5, 7);                        \
    } else {                                                                           \
      _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);                                \
      _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);                                \
    }                                                                                  \
  } while (0)

// Runs fn(unit) for every unit in [0, units), on this thread and up to (pool threads - 1) tasks
// of XLA's pool, each taking the next unit until none is left. The caller never waits for a task
// that has not started: XLA may run two custom calls at once on a 2-thread pool, each holding a
// thread, and waiting for the other's queued task would deadlock. A task that starts late finds
// no unit left and ends (its counters live on the heap: it may outlive this call); the caller
// waits only for tasks that hold a unit. Each worker sets up the tiles before its first unit.
// Which thread runs a unit varies from call to call, so no result may depend on it.
struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};
};

using UnitFn = std::function<void(int64_t)>;

int64_t Workers(ffi::ThreadPool& pool, int64_t units) {
  return std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), units);
}

void Work(Shared& s, int64_t units, const UnitFn& fn, bool use_tiles) {
  bool tiles = false;
  for (int64_t u; (u = s.next.fetch_add(1)) < units;) {
    if (use_tiles && !tiles) {
      ConfigureTiles();
      tiles = true;
    }
    fn(u);
  }
  if (tiles) _tile_release();
}

void Parallel(ffi::ThreadPool& pool, int64_t units, const UnitFn& fn, bool use_tiles) {
  auto shared = std::make_shared<Shared>();
  for (int64_t k = 1; k < Workers(pool, units); ++k) {
    pool.Schedule([shared, units, &fn, use_tiles] {
      // Counted before taking a unit: the caller returns only when every unit is taken and no
      // task holds one, so fn is alive whenever a task calls it.
      shared->active.fetch_add(1);
      Work(*shared, units, fn, use_tiles);
      shared->active.fetch_sub(1);
    });
  }
  Work(*shared, units, fn, use_tiles);
  while (shared->active.load() > 0) std::this_thread::yield();
}

// The flat padded grid of a convolution: input [n, h, w, c] padded by (top, left) to hp x wp,
// output [n, ho, wo, *] at the grid's first ho rows and wo columns of each image.
struct Grid {
  int64_t n, h, w, c, top, left, hp, wp, ho, wo;
  int64_t Rows() const { return n * hp * wp; }
};

// A walk over consecutive flat rows that keeps (image, y, x) as it goes: one division to start,
// none per row (dividing per row and tap cost more than the first layer's products).
struct Cursor {
  const Grid& g;
  int64_t n, y, x;
  Cursor(const Grid& grid, int64_t row)
      : g(grid), n(row / (grid.hp * grid.wp)), y(row % (grid.hp * grid.wp) / grid.wp),
        x(row % grid.wp) {}
  // Moves k rows on, k <= wp - x (to the end of this grid row at most).
  void Advance(int64_t k) {
    x += k;
    if (x == g.wp) {
      x = 0;
      if (++y == g.hp) {
        y = 0;
        ++n;
      }
    }
  }
  void Next() { Advance(1); }
  // The input row (c values) at tap (di, dj) of this row, or nullptr where that is padding. For a
  // row whose window fits the grid (every stored output) this is the flat row + di * wp + dj.
  const uint16_t* Input(const uint16_t* in, int64_t di = 0, int64_t dj = 0) const {
    const int64_t yy = y + di - g.top, xx = x + dj - g.left;
    if (n >= g.n || yy < 0 || yy >= g.h || xx < 0 || xx >= g.w) return nullptr;
    return in + ((n * g.h + yy) * g.w + xx) * g.c;
  }
  // The output row index (n * ho + y) * wo + x, or -1 where the window crosses the padded edge
  // (a junk row of the implicit product) or the row is past the grid.
  int64_t Output() const {
    return n < g.n && y < g.ho && x < g.wo ? (n * g.ho + y) * g.wo + x : -1;
  }
};

ffi::Error CheckGrid(const Grid& g, ffi::Span<const int64_t> offsets, int64_t panel,
                     int64_t k_cols, const char* what) {
  bool ok = k_cols % 32 == 0 && panel % 32 == 0 && panel > 0 && g.ho <= g.hp && g.wo <= g.wp &&
            g.top >= 0 && g.left >= 0 && g.h + g.top <= g.hp && g.w + g.left <= g.wp;
  for (int64_t off : offsets) ok = ok && off >= 0 && off < g.hp * g.wp;
  if (!ok) return ffi::Error::InvalidArgument(std::string(what) + ": inconsistent geometry");
  return ffi::Error::Success();
}

// The taps the tiles walk: every offset, or with im2col the one 1 x 1 tap over the im2col
// columns; and the halo, the rows past a panel they reach (the largest offset rounded up to the
// tiles' 32 rows).
struct TileTaps {
  std::vector<int64_t> offsets;
  int64_t halo = 0;
  TileTaps(ffi::Span<const int64_t> all, bool im2col)
      : offsets(im2col ? std::vector<int64_t>{0} : std::vector<int64_t>(all.begin(), all.end())) {
    for (int64_t off : offsets) halo = std::max(halo, (off + 31) / 32 * 32);
  }
  int64_t count() const { return static_cast<int64_t>(offsets.size()); }
};

// Buffer `slot` of this thread, at least n long, kept between calls: a fresh allocation's pages
// fault on first touch (costly in a VM), which cost the 224 px layers more than their products.
// A worker uses its own thread's buffers within a unit; buffers the workers share belong to the
// calling thread, which does nothing else until the call returns.
// Aligned to 64 bytes, a cache line: a tile row (64 bytes) that straddles two lines costs two.
template <typename T>
T* Scratch(int slot, int64_t n) {
  thread_local std::vector<T> buffers[4];
  std::vector<T>& b = buffers[slot];
  const int64_t pad = 64 / sizeof(T);
  if (static_cast<int64_t>(b.size()) < n + pad) b.resize(n + pad);
  const uintptr_t at = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<T*>((at + 63) / 64 * 64);
}

// The operand's columns per flat row: the input's channels, or with `im2col` every tap's channels
// side by side, zero-filled to the tiles' 32 (a layer with few input channels, the image's 3,
// becomes a 1 x 1 convolution over 32 columns: XLA built these rows slower than the product).
int64_t Columns(const Grid& g, ffi::Span<const int64_t> offsets, bool im2col) {
  return im2col ? (static_cast<int64_t>(offsets.size()) * g.c + 31) / 32 * 32 : g.c;
}

// The taps (di, dj) of the offsets di * wp + dj (dj < wp).
std::vector<std::pair<int64_t, int64_t>> Taps(const Grid& g, ffi::Span<const int64_t> offsets) {
  std::vector<std::pair<int64_t, int64_t>> taps;
  for (int64_t off : offsets) taps.emplace_back(off / g.wp, off % g.wp);
  return taps;
}

// Whether each of 32 bfloat16 values is a positive number (> 0, NaN not): as int16, 1..0x7f80
// (+inf); -0, the negatives (sign bit set) and NaN (0x7f81..) fail, as `y > 0` does.
__mmask32 Positive(const uint16_t* v) {
  const __m512i bits = _mm512_loadu_si512(reinterpret_cast<const void*>(v));
  return _mm512_cmpgt_epi16_mask(bits, _mm512_setzero_si512()) &
         _mm512_cmple_epi16_mask(bits, _mm512_set1_epi16(0x7f80));
}

// The same for 16 values.
__mmask16 Positive16(const uint16_t* v) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
  return _mm256_cmpgt_epi16_mask(bits, _mm256_setzero_si256()) &
         _mm256_cmple_epi16_mask(bits, _mm256_set1_epi16(0x7f80));
}

// dst = src where `keep` is positive, else 0 (n a multiple of 32): the ReLU's gradient,
// jnp.where(y > 0, dy, 0), applied as the kernel reads dy (left to XLA it was a pass of its own
// over every layer's dy, 5 % of a bf16 training step).
void CopyWherePositive(uint16_t* dst, const uint16_t* src, const uint16_t* keep, int64_t n) {
  for (int64_t i = 0; i < n; i += 32)
    _mm512_storeu_si512(reinterpret_cast<void*>(dst + i),
                        _mm512_maskz_mov_epi16(Positive(keep + i), _mm512_loadu_si512(
                                                   reinterpret_cast<const void*>(src + i))));
}

// Writes `count` consecutive flat rows' input channels from the cursor's row on to dst (c per
// row), moving the cursor past them: a grid row at a time, its image part one copy, the padding
// zeros (row by row, the cursor and copy cost more than the 64-channel layers' products). With
// `keep` (x's shape, c a multiple of 32), each value only where keep's is positive.
void GatherRows(Cursor& cur, const uint16_t* x, int64_t count, uint16_t* dst,
                const uint16_t* keep = nullptr) {
  const Grid& g = cur.g;
  const int64_t c = g.c;
  while (count > 0) {
    const int64_t span = std::min(count, g.wp - cur.x), yy = cur.y - g.top;
    if (cur.n >= g.n || yy < 0 || yy >= g.h) {
      std::memset(dst, 0, 2 * c * span);
    } else {
      const int64_t a = cur.x, b = cur.x + span;
      const int64_t lo = std::clamp(g.left, a, b), hi = std::clamp(g.left + g.w, a, b);
      std::memset(dst, 0, 2 * c * (lo - a));
      const int64_t from = ((cur.n * g.h + yy) * g.w + (lo - g.left)) * c;
      if (hi > lo && keep)
        CopyWherePositive(dst + (lo - a) * c, x + from, keep + from, c * (hi - lo));
      else if (hi > lo)
        std::memcpy(dst + (lo - a) * c, x + from, 2 * c * (hi - lo));
      std::memset(dst + (hi - a) * c, 0, 2 * c * (b - hi));
    }
    dst += span * c;
    count -= span;
    cur.Advance(span);
  }
}

// Writes the cursor's row's operand columns (`Columns`) to dst.
void GatherRow(const Cursor& cur, const uint16_t* x,
               const std::vector<std::pair<int64_t, int64_t>>& taps, bool im2col, int64_t k_cols,
               uint16_t* dst) {
  const int64_t c = cur.g.c;
  if (!im2col) {
    const uint16_t* src = cur.Input(x);
    if (src) std::memcpy(dst, src, 2 * c);
    else std::memset(dst, 0, 2 * c);
    return;
  }
  int64_t k = 0;
  for (size_t t = 0; t < taps.size();) {
    // A run of taps along a row (same di, consecutive dj) inside the image is one contiguous
    // stretch of the input row: one copy instead of one per tap.
    size_t run = 1;
    while (t + run < taps.size() && taps[t + run].first == taps[t].first &&
           taps[t + run].second == taps[t].second + static_cast<int64_t>(run))
      ++run;
    const uint16_t* first = cur.Input(x, taps[t].first, taps[t].second);
    const uint16_t* last =
        cur.Input(x, taps[t].first, taps[t].second + static_cast<int64_t>(run) - 1);
    if (first && last) {
      std::memcpy(dst + k, first, 2 * c * run);
      k += c * run;
      t += run;
      continue;
    }
    for (size_t end = t + run; t < end; ++t, k += c) {  // at the image's edge: tap by tap
      const uint16_t* src = cur.Input(x, taps[t].first, taps[t].second);
      if (src) std::memcpy(dst + k, src, 2 * c);
      else std::memset(dst + k, 0, 2 * c);
    }
  }
  std::memset(dst + k, 0, 2 * (k_cols - k));
}

// Index vectors of _mm512_permutex2var_epi16 (a: 0-31, b: 32-63).
struct Permutes {
  // Transposing 32 x 32: at level s (16, 8, 4, 2, 1), rows i and i + s (i & s == 0) swap the
  // off-diagonal s x s blocks of every 2s x 2s block: lo[s] makes row i, hi[s] row i + s.
  __m512i lo[5], hi[5];
  // Interleaving rows a, b into pairs: (a0 b0 a1 b1 ... a15 b15), (a16 b16 ... a31 b31).
  __m512i pair0, pair1;
  Permutes() {
    alignas(64) uint16_t l[32], h[32], p0[32], p1[32];
    for (int level = 0; level < 5; ++level) {
      const int s = 16 >> level;
      for (int col = 0; col < 32; ++col) {
        l[col] = (col & s) ? 32 + col - s : col;
        h[col] = (col & s) ? 32 + col : col + s;
      }
      lo[level] = _mm512_load_si512(l);
      hi[level] = _mm512_load_si512(h);
    }
    for (int k = 0; k < 32; ++k) {
      p0[k] = (k & 1 ? 32 : 0) + k / 2;
      p1[k] = p0[k] + 16;
    }
    pair0 = _mm512_load_si512(p0);
    pair1 = _mm512_load_si512(p1);
  }
};

// dst[i][j] = src[j][i] for a 32 x 32 bf16 block given by its 32 source rows (nullptr: zeros),
// destination rows `stride` apart.
void Transpose32(const Permutes& pm, const uint16_t* const* src, uint16_t* dst, int64_t stride) {
  __m512i r[32];
  for (int i = 0; i < 32; ++i)
    r[i] = src[i] ? _mm512_loadu_si512(reinterpret_cast<const void*>(src[i]))
                  : _mm512_setzero_si512();
  for (int level = 0; level < 5; ++level) {
    const int s = 16 >> level;
    for (int i = 0; i < 32; ++i) {
      if (i & s) continue;
      const __m512i a = r[i], b = r[i + s];
      r[i] = _mm512_permutex2var_epi16(a, pm.lo[level], b);
      r[i + s] = _mm512_permutex2var_epi16(a, pm.hi[level], b);
    }
  }
  for (int i = 0; i < 32; ++i) _mm512_storeu_si512(reinterpret_cast<void*>(dst + i * stride), r[i]);
}

// bf16 lanes -> float32 (a bfloat16 is the top half of a float32).
__m512 Widen(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// The convolution's kernel W(t, c, o) as B tiles, [T', O/16, K/32, 16, 32]: element
// [t, j16, kb, r, 2 j + i] is W(t, 32 kb + 2 r + i, 16 j16 + j). W is w [T, C, O] as given, or
// with `flip` w [T, O, C], the forward kernel of which the input gradient's convolution takes the
// taps reversed and input and output swapped: W(t, c, o) = w[T-1-t, o, c]. With im2col, T' = 1 and
// column k is (tap k / C, channel k % C), zero past T C. Packing here, once per call, replaces
// XLA's transposes of every kernel (~10 % of a bfloat16 forward pass).
const uint16_t* Pack(const Permutes& pm, const uint16_t* w, int64_t taps, int64_t c, int64_t o,
                     bool flip, bool im2col, int64_t k_cols) {
  const int64_t t_out = im2col ? 1 : taps, kc = im2col ? k_cols : c;
  uint16_t* packed = Scratch<uint16_t>(3, t_out * kc * o + (flip ? taps * c * o : 0));
  const uint16_t* rows = w;  // [T', K, O] row-major (im2col: [T C, O], zero rows past it)
  if (flip) {
    uint16_t* t_rows = packed + t_out * kc * o;
    const uint16_t* src[32];
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t o0 = 0; o0 < o; o0 += 32)
        for (int64_t c0 = 0; c0 < c; c0 += 32) {
          for (int i = 0; i < 32; ++i) src[i] = w + ((taps - 1 - t) * o + o0 + i) * c + c0;
          Transpose32(pm, src, t_rows + (t * c + c0) * o + o0, o);
        }
    rows = t_rows;
  }
  const __m512i zero = _mm512_setzero_si512();
  const int64_t valid = im2col ? taps * c : t_out * kc;  // rows of [T', K, O] that hold w
  for (int64_t t = 0; t < t_out; ++t)
    for (int64_t kb = 0; kb < kc / 32; ++kb)
      for (int64_t r = 0; r < 16; ++r) {
        const int64_t k = t * kc + kb * 32 + 2 * r;  // rows k, k + 1 of [T', K, O]
        const uint16_t* ra = k < valid ? rows + k * o : nullptr;
        const uint16_t* rb = k + 1 < valid ? rows + (k + 1) * o : nullptr;
        for (int64_t ob = 0; ob < o / 32; ++ob) {
          const __m512i a = ra ? _mm512_loadu_si512(reinterpret_cast<const void*>(ra + ob * 32)) : zero;
          const __m512i b = rb ? _mm512_loadu_si512(reinterpret_cast<const void*>(rb + ob * 32)) : zero;
          for (int half = 0; half < 2; ++half) {
            const int64_t j16 = 2 * ob + half;
            uint16_t* dst = packed + (((t * (o / 16) + j16) * (kc / 32) + kb) * 16 + r) * 32;
            _mm512_storeu_si512(reinterpret_cast<void*>(dst),
                                _mm512_permutex2var_epi16(a, half ? pm.pair1 : pm.pair0, b));
          }
        }
      }
  return packed;
}

// The products on AVX512-BF16's vector units (a CPU with avx512_bf16 and no AMX, e.g. AMD EPYC
// Zen 4): the same operands in the same layouts as the tiles take them, 8 rows x 32 columns of
// sums in 16 registers, each VDPBF16PS adding a bf16 pair's two products (the B operands' pair
// rows are the packed tiles' rows; an A pair is broadcast from its row). `Strip` adds to
// acc[i][h] (row i, columns 16 h .. 16 h + 15) the products of 8 A rows (`a`, `lda` apart) with
// `pairs` B pair rows (b0: columns 0-15, b1: 16-31, `ldb` apart), the k-th pair of A at a + 2 k.
inline __m512bh PairOf(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);  // any alignment: a tap's offset may be odd
  return (__m512bh)_mm512_set1_epi32(v);
}

// Every loop over the 8 rows is unrolled and Strip inlined, so that the sums stay in registers
// (indexed by a loop variable, GCC kept them in memory: a load and a store per product).
__attribute__((always_inline)) inline void Strip(__m512 (&acc)[8][2], const uint16_t* a,
                                                 int64_t lda, const uint16_t* b0,
                                                 const uint16_t* b1, int64_t ldb, int64_t pairs) {
  for (int64_t k = 0; k < pairs; ++k) {
    const __m512bh lo = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(b0 + k * ldb));
    const __m512bh hi = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(b1 + k * ldb));
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512bh ai = PairOf(a + i * lda + 2 * k);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, lo);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, hi);
    }
  }
}

// The tiles' counterparts of `Strip`, on a 32 x 32 block of float32 sums in accumulators 0-3.
template <Units kU>
__attribute__((always_inline)) inline void TileZero() {
  CXR_TILE_ZERO(0); CXR_TILE_ZERO(1); CXR_TILE_ZERO(2); CXR_TILE_ZERO(3);
}

// `TileProducts` adds the products of 32 A rows (`lda` apart, the first 16 tile 4, the next tile 5)
// with `kc` packed B tile pairs (`Pack`'s layout: block k at b + k * kTileW, its columns 16-31 at
// b + (kc + k) * kTileW), the k-th 32 columns of A with the k-th pair.
template <Units kU>
__attribute__((always_inline)) inline void TileProducts(const uint16_t* a, int64_t lda,
                                                        const uint16_t* b, int64_t kc) {
  for (int64_t k = 0; k < kc; ++k) {
    CXR_TILE_LOAD(4, a + k * 32, lda * 2);
    CXR_TILE_LOAD(5, a + 16 * lda + k * 32, lda * 2);
    CXR_TILE_LOAD(6, b + k * kTileW, 64);
    CXR_TILE_LOAD(7, b + (kc + k) * kTileW, 64);
    CXR_TILE_BLOCK_PRODUCTS();
  }
}

// Stores accumulators 0-3 to the block at g, rows `ldg` floats apart.
template <Units kU>
__attribute__((always_inline)) inline void TileStore(float* g, int64_t ldg) {
  CXR_TILE_STORE(0, g, ldg * 4);
  CXR_TILE_STORE(1, g + 16, ldg * 4);
  CXR_TILE_STORE(2, g + 16 * ldg, ldg * 4);
  CXR_TILE_STORE(3, g + 16 * ldg + 16, ldg * 4);
}

// g's 32 x 32 block (rows `ldg` floats apart) += the sums over `len` summed rows (a multiple of
// 32) of A, 32 rows of channels (`lda` elements apart, each along the summed rows; the first 16
// tile 4, the next tile 5), times B, pair rows of 32 outputs x 2 (`ldb` elements apart): A's
// columns r + 2 k, r + 2 k + 1 meet B's pair row r / 2 + k.
template <Units kU>
__attribute__((always_inline)) inline void TileSums(float* g, int64_t ldg, const uint16_t* a,
                                                    int64_t lda, const uint16_t* b, int64_t ldb,
                                                    int64_t len) {
  CXR_TILE_LOAD(0, g, ldg * 4);
  CXR_TILE_LOAD(1, g + 16, ldg * 4);
  CXR_TILE_LOAD(2, g + 16 * ldg, ldg * 4);
  CXR_TILE_LOAD(3, g + 16 * ldg + 16, ldg * 4);
  for (int64_t r = 0; r < len; r += 32) {
    CXR_TILE_LOAD(4, a + r, lda * 2);
    CXR_TILE_LOAD(5, a + 16 * lda + r, lda * 2);
    CXR_TILE_LOAD(6, b + (r / 2) * ldb, ldb * 2);
    CXR_TILE_LOAD(7, b + (r / 2) * ldb + 32, ldb * 2);
    CXR_TILE_BLOCK_PRODUCTS();
  }
  TileStore<kU>(g, ldg);
}

// What both calls derive from x [N, H, W, C], the attributes and the output's spatial size: the
// grid, the operand's columns per row, the taps the tiles walk and each offset's (di, dj).
struct Problem {
  Grid g;
  int64_t c;  // `Columns`
  TileTaps walk;
  std::vector<std::pair<int64_t, int64_t>> tap_ij;
  const uint16_t* x;
  Problem(ffi::AnyBuffer xb, int64_t ho, int64_t wo, ffi::Span<const int64_t> offsets, int64_t top,
          int64_t left, int64_t hp, int64_t wp, bool im2col)
      : g{xb.dimensions()[0], xb.dimensions()[1], xb.dimensions()[2], xb.dimensions()[3], top, left,
          hp, wp, ho, wo},
        c(Columns(g, offsets, im2col)), walk(offsets, im2col), tap_ij(Taps(g, offsets)),
        x(reinterpret_cast<const uint16_t*>(xb.untyped_data())) {}
};

// y [N, Ho, Wo, O] from x [N, H, W, C] and the kernel w [KH, KW, C, O] (with `flip`, the forward
// kernel [KH, KW, O, C] of which this is the input gradient's convolution, `Pack`), plus the
// float32 bias [O], then with `relu` max(0, .), before the one rounding to bfloat16: left to XLA,
// the bias and the ReLU were passes over every output (a quarter of a bf16 forward pass). With
// `masked`, x counts only where `keep` (x's shape) is positive: the input gradient of a conv whose
// ReLU output is `keep`, its dy masked as it is gathered (`CopyWherePositive`). Units:
// panels of `panel` flat rows; a worker gathers its panel's operand rows (and the halo) into a
// buffer that stays in L2 while each 32-wide slice of the kernel passes over every 32-row block.
template <Units kU>
ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer xb, ffi::AnyBuffer wb,
                   ffi::Buffer<ffi::F32> bias, ffi::AnyBuffer keepb,
                   ffi::Span<const int64_t> offsets, int64_t panel, int64_t top, int64_t left,
                   int64_t hp, int64_t wp, int64_t im2col, int64_t flip, int64_t relu,
                   int64_t masked, ffi::Result<ffi::AnyBuffer> y) {
  const auto yd = y->dimensions();
  const Problem pr(xb, yd[1], yd[2], offsets, top, left, hp, wp, im2col);
  const Grid& g = pr.g;
  const int64_t o = yd[3], c = pr.c;
  if (o % 32 || wb.element_count() != static_cast<int64_t>(offsets.size()) * g.c * o ||
      bias.element_count() != o || (flip && (im2col || g.c % 32)))
    return ffi::Error::InvalidArgument(
        "amx_conv_forward: O must be a multiple of 32, the kernel T x C x O, the bias O (flip: C "
        "too, no im2col)");
  if (masked && (im2col || g.c % 32 || keepb.element_count() != xb.element_count()))
    return ffi::Error::InvalidArgument(
        "amx_conv_forward: the mask must have x's shape, C a multiple of 32, no im2col");
  const float* b_o = bias.typed_data();
  const uint16_t* keep = masked ? reinterpret_cast<const uint16_t*>(keepb.untyped_data()) : nullptr;
  if (auto e = CheckGrid(g, offsets, panel, c, "amx_conv_forward"); e.failure()) return e;
  constexpr bool kTiles = kU != Units::kVector;
  const int64_t taps = pr.walk.count(), halo = pr.walk.halo;
  const int64_t* tap_offsets = pr.walk.offsets.data();
  const auto& tap_ij = pr.tap_ij;
  const uint16_t* x = pr.x;
  const Permutes pm;
  const uint16_t* w = Pack(pm, reinterpret_cast<const uint16_t*>(wb.untyped_data()),
                           static_cast<int64_t>(offsets.size()), g.c, o, flip, im2col, c);
  uint16_t* out = reinterpret_cast<uint16_t*>(y->untyped_data());
  const int64_t cc = c / 32;
  const int64_t rows = (g.Rows() + 31) / 32 * 32, panels = (rows + panel - 1) / panel;
  Parallel(pool, panels, [&](int64_t p) {
    const int64_t r0 = p * panel, n_rows = std::min(panel, rows - r0);
    uint16_t* xl = Scratch<uint16_t>(0, (n_rows + halo) * c);
    Cursor cur(g, r0);
    if (im2col) {
      for (int64_t q = 0; q < n_rows + halo; ++q, cur.Next())
        GatherRow(cur, x, tap_ij, im2col, c, xl + q * c);
    } else {
      GatherRows(cur, x, n_rows + halo, xl, keep);
    }
    // Two blocks of sums: a block's epilogue (bias, ReLU, rounding, store of its valid rows) runs
    // on the vector units a few rows after each tap of the next block's tile products, so the two
    // overlap (the epilogue is up to 30 % of a 64-channel layer's time; overlapped, the forward
    // pass ran 4-10 % faster than with each epilogue after its block).
    alignas(64) float blocks[2][32 * 32];
    int64_t pending_ob = -1, done = 32;
    const float* pending = nullptr;
    std::optional<Cursor> rows_at;
    const auto drain = [&](int64_t upto) {
      if (pending_ob < 0) return;
      const __m512 b_lo = _mm512_loadu_ps(b_o + pending_ob * 32);
      const __m512 b_hi = _mm512_loadu_ps(b_o + pending_ob * 32 + 16);
      for (; done < upto; ++done, rows_at->Next()) {
        const int64_t dst = rows_at->Output();
        if (dst < 0) continue;
        __m512 lo = _mm512_add_ps(_mm512_load_ps(pending + done * 32), b_lo);
        __m512 hi = _mm512_add_ps(_mm512_load_ps(pending + done * 32 + 16), b_hi);
        if (relu) {  // max(0, v) returns v where v is NaN (the second operand): NaN stays NaN
          lo = _mm512_max_ps(_mm512_setzero_ps(), lo);
          hi = _mm512_max_ps(_mm512_setzero_ps(), hi);
        }
        _mm512_storeu_si512(reinterpret_cast<void*>(out + dst * o + pending_ob * 32),
                            (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    };
    if constexpr (!kTiles) {  // vector units: a block's sums, then its epilogue (same units)
      for (int64_t ob = 0; ob < o / 32; ++ob) {
        for (int64_t r = 0; r < n_rows; r += 32) {
          float* block = blocks[0];
          for (int64_t i0 = 0; i0 < 32; i0 += 8) {
            __m512 acc[8][2];
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
            for (int64_t t = 0; t < taps; ++t) {
              const uint16_t* a = xl + (r + i0 + tap_offsets[t]) * c;
              const uint16_t* b = w + ((t * (o / 16) + 2 * ob) * cc) * kTileW;
              for (int64_t k = 0; k < cc; ++k)
                Strip(acc, a + k * 32, c, b + k * kTileW, b + (cc + k) * kTileW, 32, 16);
            }
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) {
              _mm512_store_ps(block + (i0 + i) * 32, acc[i][0]);
              _mm512_store_ps(block + (i0 + i) * 32 + 16, acc[i][1]);
            }
          }
          pending_ob = ob;
          pending = block;
          done = 0;
          rows_at.emplace(g, r0 + r);
          drain(32);
        }
      }
      return;
    }
    const int64_t per_tap = (32 + taps - 1) / taps;
    int64_t k_block = 0;
    for (int64_t ob = 0; ob < o / 32; ++ob) {
      for (int64_t r = 0; r < n_rows; r += 32, ++k_block) {
        TileZero<kU>();
        for (int64_t t = 0; t < taps; ++t) {
          TileProducts<kU>(xl + (r + tap_offsets[t]) * c, c,
                           w + ((t * (o / 16) + 2 * ob) * cc) * kTileW, cc);
          drain(std::min<int64_t>(32, (t + 1) * per_tap));
        }
        drain(32);
        float* block = blocks[k_block & 1];
        TileStore<kU>(block, 32);
        pending_ob = ob;
        pending = block;
        done = 0;
        rows_at.emplace(g, r0 + r);
      }
    }
    drain(32);
  }, kU == Units::kTiles);
  return ffi::Error::Success();
}

// dw [T, C, O] and db [O] (float32) from x [N, H, W, C] and dy [N, Ho, Wo, O] (with `masked`, dy
// only where `keep`, the layer's ReLU output, is positive: `CopyWherePositive`). Panels of `panel`
// flat rows, in one contiguous group per pool thread (the units); per panel, the group gathers the
// input rows and halo transposed ([C, panel + halo]) and the dy rows pair-interleaved ([panel/2,
// O, 2], summing db on the way), then every item (tap, 32-channel block, 32-output block) passes
// over them, adding into the group's own sums (group 0's are dw itself). The groups' sums are
// added in group order at the end: the same sums in the same order whichever thread ran a group,
// so the result is the same on every call.
template <Units kU>
ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::AnyBuffer xb, ffi::AnyBuffer dyb,
                      ffi::AnyBuffer keepb, ffi::Span<const int64_t> offsets, int64_t panel,
                      int64_t top, int64_t left, int64_t hp, int64_t wp, int64_t im2col,
                      int64_t masked, ffi::Result<ffi::AnyBuffer> dw,
                      ffi::Result<ffi::AnyBuffer> db) {
  const auto dd = dyb.dimensions();
  const Problem pr(xb, dd[1], dd[2], offsets, top, left, hp, wp, im2col);
  const Grid& g = pr.g;
  const int64_t c = pr.c, o = dd[3];
  if (o % 32 || dd[0] != g.n || (masked && keepb.element_count() != dyb.element_count()))
    return ffi::Error::InvalidArgument(
        "amx_conv_weight_grad: O must be a multiple of 32, N as x's, the mask dy's shape");
  const uint16_t* keep = masked ? reinterpret_cast<const uint16_t*>(keepb.untyped_data()) : nullptr;
  if (auto e = CheckGrid(g, offsets, panel, c, "amx_conv_weight_grad"); e.failure()) return e;
  constexpr bool kTiles = kU != Units::kVector;
  const int64_t taps = pr.walk.count(), halo = pr.walk.halo;
  const int64_t* tap_offsets = pr.walk.offsets.data();
  const auto& tap_ij = pr.tap_ij;
  const uint16_t* x = pr.x;
  const uint16_t* d = reinterpret_cast<const uint16_t*>(dyb.untyped_data());
  const int64_t width = panel + halo, size = taps * c * o;
  const int64_t panels = (g.Rows() + panel - 1) / panel, groups = Workers(pool, panels);
  const int64_t cb = c / 32, obs = o / 32;
  float* out = reinterpret_cast<float*>(dw->untyped_data());
  std::memset(out, 0, sizeof(float) * size);
  // Groups 1.. add into their own sums, every group into its own bias sums (the caller's buffer).
  float* sums = Scratch<float>(0, (groups - 1) * size + groups * o);
  float* bias = sums + (groups - 1) * size;
  std::memset(sums, 0, sizeof(float) * ((groups - 1) * size + groups * o));
  const Permutes pm;
  Parallel(pool, groups, [&](int64_t grp) {
    uint16_t* xp = Scratch<uint16_t>(0, c * width);
    uint16_t* dp = Scratch<uint16_t>(1, panel * o);
    uint16_t* cols = Scratch<uint16_t>(2, im2col ? 32 * c : 0);  // 32 im2col rows
    float* acc = grp == 0 ? out : sums + (grp - 1) * size;
    for (int64_t p = grp * panels / groups; p < (grp + 1) * panels / groups; ++p) {
      const int64_t r0 = p * panel;
      const uint16_t* src[32];
      for (int64_t q = 0; q < width; q += 32) {
        Cursor cur(g, r0 + q);
        for (int i = 0; i < 32; ++i, cur.Next()) {
          if (im2col) {
            GatherRow(cur, x, tap_ij, true, c, cols + i * c);
            src[i] = cols + i * c;
          } else {
            src[i] = cur.Input(x);
          }
        }
        const uint16_t* rows[32];
        for (int64_t ci = 0; ci < cb; ++ci) {
          for (int i = 0; i < 32; ++i) rows[i] = src[i] ? src[i] + ci * 32 : nullptr;
          Transpose32(pm, rows, xp + ci * 32 * width + q, width);
        }
      }
      float* bsum = bias + grp * o;
      Cursor cur(g, r0);
      for (int64_t q = 0; q < panel; q += 2) {
        const int64_t ia = cur.Output();
        cur.Next();
        const int64_t ib = cur.Output();
        cur.Next();
        for (int64_t ob = 0; ob < obs; ++ob) {
          const auto row = [&](int64_t i) {  // dy's 32 values (where keep's are positive)
            if (i < 0) return _mm512_setzero_si512();
            const __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(d + i * o + ob * 32));
            return keep ? _mm512_maskz_mov_epi16(Positive(keep + i * o + ob * 32), v) : v;
          };
          const __m512i a = row(ia), b = row(ib);
          uint16_t* pair = dp + ((q / 2) * o + ob * 32) * 2;
          _mm512_storeu_si512(reinterpret_cast<void*>(pair), _mm512_permutex2var_epi16(a, pm.pair0, b));
          _mm512_storeu_si512(reinterpret_cast<void*>(pair + 32), _mm512_permutex2var_epi16(a, pm.pair1, b));
          __m512 lo = _mm512_add_ps(Widen(_mm512_castsi512_si256(a)), Widen(_mm512_castsi512_si256(b)));
          __m512 hi = _mm512_add_ps(Widen(_mm512_extracti64x4_epi64(a, 1)),
                                    Widen(_mm512_extracti64x4_epi64(b, 1)));
          _mm512_storeu_ps(bsum + ob * 32, _mm512_add_ps(_mm512_loadu_ps(bsum + ob * 32), lo));
          _mm512_storeu_ps(bsum + ob * 32 + 16, _mm512_add_ps(_mm512_loadu_ps(bsum + ob * 32 + 16), hi));
        }
      }
      // Channel block, output block, then tap: a channel block's rows (32 x (panel + halo)) and an
      // output block's (panel x 32) stay in L2 while every tap passes over them.
      for (int64_t ci = 0; ci < cb; ++ci) {
        for (int64_t ob = 0; ob < obs; ++ob) {
          for (int64_t t = 0; t < taps; ++t) {
            const uint16_t* a = xp + ci * 32 * width + tap_offsets[t];
            float* gb = acc + (t * c + ci * 32) * o + ob * 32;
            if constexpr (!kTiles) {  // vector units: 8 channels x 32 outputs at a time
              for (int64_t i0 = 0; i0 < 32; i0 += 8) {
                __m512 sums[8][2];
#pragma GCC unroll 8
                for (int i = 0; i < 8; ++i) {
                  sums[i][0] = _mm512_loadu_ps(gb + (i0 + i) * o);
                  sums[i][1] = _mm512_loadu_ps(gb + (i0 + i) * o + 16);
                }
                for (int64_t r = 0; r < panel; r += 32) {
                  const uint16_t* b = dp + (r / 2) * o * 2 + ob * 64;
                  Strip(sums, a + i0 * width + r, width, b, b + 32, o * 2, 16);
                }
#pragma GCC unroll 8
                for (int i = 0; i < 8; ++i) {
                  _mm512_storeu_ps(gb + (i0 + i) * o, sums[i][0]);
                  _mm512_storeu_ps(gb + (i0 + i) * o + 16, sums[i][1]);
                }
              }
              continue;
            }
            TileSums<kU>(gb, o, a, width, dp + ob * 64, o * 2, panel);
          }
        }
      }
    }
  }, kU == Units::kTiles);
  for (int64_t k = 1; k < groups; ++k)
    for (int64_t i = 0; i < size; ++i) out[i] += sums[(k - 1) * size + i];
  float* bout = reinterpret_cast<float*>(db->untyped_data());
  std::memset(bout, 0, sizeof(float) * o);
  for (int64_t k = 0; k < groups; ++k)
    for (int64_t i = 0; i < o; ++i) bout[i] += bias[k * o + i];
  return ffi::Error::Success();
}

// Winograd F(2x2, 3x3)'s B^T (cxr_jax.ops.winograd.MATRICES[2]), row r as (first tap, second tap,
// sign of the second): every row is d[i] - d[j] or d[i] + d[j]. `BtRow` applies row r to those
// two taps' values, the one float32 operation XLA's form does for it.
constexpr int kBt[4][3] = {{0, 2, -1}, {1, 2, 1}, {2, 1, -1}, {1, 3, -1}};

inline __m512 BtRow(int r, __m512 first, __m512 second) {
  return kBt[r][2] > 0 ? _mm512_add_ps(first, second) : _mm512_sub_ps(first, second);
}

// A walk over consecutive Winograd tiles t = (image, tile row, tile column) of a th x tw grid: one
// division to start, none per tile (three per tile, redone per channel block, cost the weight
// gradient more than its products at 56 px).
struct TileWalk {
  int64_t th, tw, img, ty, tx;
  TileWalk(int64_t th_, int64_t tw_, int64_t t)
      : th(th_), tw(tw_), img(t / (th_ * tw_)), ty(t % (th_ * tw_) / tw_), tx(t % tw_) {}
  void Next() {
    if (++tx == tw) {
      tx = 0;
      if (++ty == th) {
        ty = 0;
        ++img;
      }
    }
  }
};

// The Winograd F(2x2, 3x3) kernel u = G W G^T at each of the 16 tile positions, rounded to
// bfloat16, in `Pack`'s layout [16, O/16, C/2, 16, 2], from w [3, 3, C, O] (with `flip`, the
// forward kernel [3, 3, O, C] of which this is the input gradient's: W(i, j, c, o) =
// w[2 - i, 2 - j, o, c], each unit transposing its own 32 channels' slab with `Transpose32`).
// float32 sums in the order cxr_jax.ops.winograd._kernel_tiles takes them (over the kernel's rows,
// then its columns; G's 1/2 exact), so u holds the values XLA's F(2x2) form multiplies by. Units:
// 32 channels each. Left to XLA, this transform (16 float32 fusions, a concatenation and the
// layout's transpose) cost ~15 ms a call at 512 x 512 channels, more than a 14 px layer's products.
const uint16_t* WinogradKernel(ffi::ThreadPool& pool, const Permutes& pm, const uint16_t* w,
                               int64_t c, int64_t o, bool flip) {
  uint16_t* packed = Scratch<uint16_t>(3, 16 * c * o);
  Parallel(pool, c / 32, [&](int64_t cb) {
    // slab(t, r) points at W's row (tap t, channel 32 cb + r), o values.
    const uint16_t* slab = w + cb * 32 * o;
    int64_t tap_stride = c * o;
    if (flip) {
      uint16_t* t_rows = Scratch<uint16_t>(2, 9 * 32 * o);
      const uint16_t* src[32];
      for (int64_t t = 0; t < 9; ++t)
        for (int64_t o0 = 0; o0 < o; o0 += 32) {
          for (int i = 0; i < 32; ++i) src[i] = w + ((8 - t) * o + o0 + i) * c + cb * 32;
          Transpose32(pm, src, t_rows + t * 32 * o + o0, o);
        }
      slab = t_rows;
      tap_stride = 32 * o;
    }
    for (int64_t r = 0; r < 16; ++r)  // pair rows 16 cb + r: channels 32 cb + 2 r, + 1
      for (int64_t j16 = 0; j16 < o / 16; ++j16) {
        __m512i half[2][16];  // [i][k]: channel 2 r + i's 16 values at position k, as bf16
        for (int i = 0; i < 2; ++i) {
          __m512 g[3][3];
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx)
              g[ky][kx] = Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                  slab + (ky * 3 + kx) * tap_stride + (2 * r + i) * o + 16 * j16)));
          const __m512 h = _mm512_set1_ps(0.5f);
          __m512 rows[4][3];  // G over the kernel's rows
          for (int kx = 0; kx < 3; ++kx) {
            const __m512 a = _mm512_mul_ps(g[0][kx], h), b = _mm512_mul_ps(g[1][kx], h),
                         d = _mm512_mul_ps(g[2][kx], h);
            rows[0][kx] = g[0][kx];
            rows[1][kx] = _mm512_add_ps(_mm512_add_ps(a, b), d);
            rows[2][kx] = _mm512_add_ps(_mm512_sub_ps(a, b), d);
            rows[3][kx] = g[2][kx];
          }
          for (int a4 = 0; a4 < 4; ++a4) {
            const __m512 a = _mm512_mul_ps(rows[a4][0], h), b = _mm512_mul_ps(rows[a4][1], h),
                         d = _mm512_mul_ps(rows[a4][2], h);
            const __m512 cols[4] = {rows[a4][0], _mm512_add_ps(_mm512_add_ps(a, b), d),
                                    _mm512_add_ps(_mm512_sub_ps(a, b), d), rows[a4][2]};
            for (int b4 = 0; b4 < 4; ++b4)
              half[i][4 * a4 + b4] = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(cols[b4]));
          }
        }
        for (int k = 0; k < 16; ++k)
          _mm512_storeu_si512(
              reinterpret_cast<void*>(packed + ((k * (o / 16) + j16) * (c / 2) + 16 * cb + r) * 32),
              _mm512_permutex2var_epi16(half[0][k], pm.pair0, half[1][k]));
      }
  }, false);
  return packed;
}

// Winograd F(2x2, 3x3) forward on AVX512-BF16's vector units (or the tiles: below): y [N, Ho, Wo,
// O] from x [N, H, W, C] and the kernel w [3, 3, C, O] (with `flip`, the forward kernel whose
// input gradient this is, `WinogradKernel`), plus the float32 bias, then with `relu`
// max(0, .), rounded once to bfloat16; with `masked`, x counts only where `keep` is positive (the
// input gradient's dy, as `Forward` masks it). The 4 x 4 input tiles at stride 2 (the first at
// (-top, -left)) are transformed (B^T d B, float32, rounded to bfloat16: the same values as
// cxr_jax.ops.winograd's XLA form computes) into a unit's own buffer, V [16, tiles, C]; the 16
// products V_k @ u_k run as `Forward`'s do (8 tiles x 32 outputs in registers) and the output
// transform (A^T m A), bias, ReLU and rounding follow per 32 outputs. Left to XLA (`wino2`), the
// transforms ran in separate float32 fusions with converts around the products: ~30 % of a bf16
// VGG16 step (benchmarks/results/bf16_step_profile_epyc_avx512bf16_vector.md). Units: panels of
// `panel` tiles (a multiple of 8), V staying in L2 while every output block passes over it.
// On the tiles (kU not kVector) the 16 products are `Forward`'s tile products with one tap: u is
// already in their B layout, V's rows (32-tile blocks: a panel a multiple of 32) their A rows.
template <Units kU>
ffi::Error WinogradForward(ffi::ThreadPool pool, ffi::AnyBuffer xb, ffi::AnyBuffer ub,
                           ffi::Buffer<ffi::F32> bias, ffi::AnyBuffer keepb, int64_t panel,
                           int64_t top, int64_t left, int64_t flip, int64_t relu, int64_t masked,
                           ffi::Result<ffi::AnyBuffer> y) {
  const auto xd = xb.dimensions();
  const auto yd = y->dimensions();
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3];
  const int64_t ho = yd[1], wo = yd[2], o = yd[3];
  constexpr bool kTiles = kU != Units::kVector;
  constexpr int64_t strip = kTiles ? 32 : 8;  // the tiles' products take 32 tiles at a time
  if (yd[0] != n || c % 32 || o % 32 || ub.element_count() != 9 * c * o ||
      bias.element_count() != o || panel <= 0 || panel % strip || top < 0 || left < 0 || ho <= 0 ||
      wo <= 0 || (masked && keepb.element_count() != xb.element_count()))
    return ffi::Error::InvalidArgument(
        "bf16_winograd_forward: C and O must be multiples of 32, w 3 x 3 x C x O, the bias O, the "
        "panel a positive multiple of 8 tiles (32 on the tiles), the mask x's shape");
  const uint16_t* x = reinterpret_cast<const uint16_t*>(xb.untyped_data());
  const uint16_t* keep = masked ? reinterpret_cast<const uint16_t*>(keepb.untyped_data()) : nullptr;
  const float* b_o = bias.typed_data();
  uint16_t* out = reinterpret_cast<uint16_t*>(y->untyped_data());
  const int64_t th = (ho + 1) / 2, tw = (wo + 1) / 2, tiles = n * th * tw;
  const Permutes pm;
  const uint16_t* u = WinogradKernel(pool, pm, reinterpret_cast<const uint16_t*>(ub.untyped_data()),
                                     c, o, flip);
  const int64_t cc = c / 32, units = (tiles + panel - 1) / panel;
  Parallel(pool, units, [&](int64_t p) {
    const int64_t q0 = p * panel, nq = std::min(panel, tiles - q0);
    const int64_t rows = (nq + strip - 1) / strip * strip;
    uint16_t* v = Scratch<uint16_t>(0, 16 * rows * c);  // V[k][tile][c]
    float* m = Scratch<float>(1, 16 * rows * 32);       // the products of one output block
    TileWalk tile(th, tw, q0);
    for (int64_t q = 0; q < rows; ++q, tile.Next()) {
      if (q >= nq) {  // a last strip's missing tiles: zeros, never stored
        for (int k = 0; k < 16; ++k) std::memset(v + (k * rows + q) * c, 0, 2 * c);
        continue;
      }
      const int64_t img = tile.img, ty = tile.ty, tx = tile.tx;
      int64_t at[4][4];  // each tap's offset into x, or -1 where it is padding
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t yy = 2 * ty + i - top, xx = 2 * tx + j - left;
          at[i][j] = yy < 0 || yy >= h || xx < 0 || xx >= w ? -1 : ((img * h + yy) * w + xx) * c;
        }
      for (int64_t c0 = 0; c0 < c; c0 += 32) {
        for (int half = 0; half < 2; ++half) {
          __m512 d[4][4];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              if (at[i][j] < 0) {
                d[i][j] = _mm512_setzero_ps();
                continue;
              }
              const uint16_t* src = x + at[i][j] + c0 + 16 * half;
              __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
              if (keep) bits = _mm256_maskz_mov_epi16(Positive16(keep + at[i][j] + c0 + 16 * half), bits);
              d[i][j] = Widen(bits);
            }
          // B^T d B, over the tile's rows, then its columns (`BtRow`).
          __m512 r[4][4];
          for (int a = 0; a < 4; ++a)
            for (int j = 0; j < 4; ++j) r[a][j] = BtRow(a, d[kBt[a][0]][j], d[kBt[a][1]][j]);
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b)
              _mm256_storeu_si256(
                  reinterpret_cast<__m256i*>(v + ((4 * a + b) * rows + q) * c + c0 + 16 * half),
                  (__m256i)_mm512_cvtneps_pbh(BtRow(b, r[a][kBt[b][0]], r[a][kBt[b][1]])));
        }
      }
    }
    for (int64_t ob = 0; ob < o / 32; ++ob) {
      for (int k = 0; k < 16; ++k) {
        // u_k's 32 columns of this block (C x 32, 2C pair rows) stay in L1 over every strip.
        const uint16_t* b = u + ((k * (o / 16) + 2 * ob) * cc) * kTileW;
        if constexpr (kTiles) {
          for (int64_t i0 = 0; i0 < rows; i0 += 32) {
            TileZero<kU>();
            TileProducts<kU>(v + (k * rows + i0) * c, c, b, cc);
            TileStore<kU>(m + (k * rows + i0) * 32, 32);
          }
          continue;
        }
        for (int64_t i0 = 0; i0 < rows; i0 += 8) {
          __m512 acc[8][2];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
          const uint16_t* a = v + (k * rows + i0) * c;
          for (int64_t kb = 0; kb < cc; ++kb)
            Strip(acc, a + kb * 32, c, b + kb * kTileW, b + (cc + kb) * kTileW, 32, 16);
          float* mk = m + (k * rows + i0) * 32;
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) {
            _mm512_store_ps(mk + i * 32, acc[i][0]);
            _mm512_store_ps(mk + i * 32 + 16, acc[i][1]);
          }
        }
      }
      // A^T m A over the tile's rows, then its columns (winograd.MATRICES[2]'s A^T), + bias, ReLU.
      TileWalk tile(th, tw, q0);
      for (int64_t q = 0; q < nq; ++q, tile.Next()) {
        const int64_t img = tile.img, ty = tile.ty, tx = tile.tx;
        for (int half = 0; half < 2; ++half) {
          __m512 mm[16];
          for (int k = 0; k < 16; ++k) mm[k] = _mm512_load_ps(m + (k * rows + q) * 32 + 16 * half);
          __m512 s[2][4];
          for (int j = 0; j < 4; ++j) {
            s[0][j] = _mm512_add_ps(_mm512_add_ps(mm[j], mm[4 + j]), mm[8 + j]);
            s[1][j] = _mm512_sub_ps(_mm512_sub_ps(mm[4 + j], mm[8 + j]), mm[12 + j]);
          }
          const __m512 bo = _mm512_loadu_ps(b_o + ob * 32 + 16 * half);
          for (int pi = 0; pi < 2; ++pi) {
            const int64_t oy = 2 * ty + pi;
            if (oy >= ho) continue;
            const __m512 yv[2] = {_mm512_add_ps(_mm512_add_ps(s[pi][0], s[pi][1]), s[pi][2]),
                                  _mm512_sub_ps(_mm512_sub_ps(s[pi][1], s[pi][2]), s[pi][3])};
            for (int pj = 0; pj < 2; ++pj) {
              const int64_t ox = 2 * tx + pj;
              if (ox >= wo) continue;
              __m512 val = _mm512_add_ps(yv[pj], bo);
              if (relu) val = _mm512_max_ps(_mm512_setzero_ps(), val);  // NaN stays NaN
              _mm256_storeu_si256(
                  reinterpret_cast<__m256i*>(out + ((img * ho + oy) * wo + ox) * o + ob * 32 + 16 * half),
                  (__m256i)_mm512_cvtneps_pbh(val));
            }
          }
        }
      }
    }
  }, kU == Units::kTiles);
  return ffi::Error::Success();
}

// The weight and bias gradients of `WinogradForward` (without flip): dw [3, 3, C, O] and db [O]
// (float32) from x [N, H, W, C] and dy [N, Ho, Wo, O] (with `masked`, dy only where `keep` is
// positive), Winograd's adjoint as cxr_jax.ops.winograd.weight_grad computes it: per tile
// position k = (a, b), dU_k = V_k^T dM_k summed over the tiles (V = B^T d B of the input tiles,
// dM = A dy A^T of the output gradient's 2 x 2 blocks, both rounded to bfloat16, float32 sums),
// then dw = G^T dU G in float32. A unit is one row a of positions (its 4 k) over one of `groups`
// groups of panels (the caller's: one per 4 cores, so more cores have units to take), each group
// with its own sums, added in group order at the end; db is a unit of its own. A unit walks its
// tiles a panel of `panel` (a multiple of 32) at a time: it transforms its row's positions only
// (half of each tile's input; dy once per row: one unit per position read dy 16 times, and memory
// bandwidth, not the products, set the pace), channels first ([4, C, panel], `Transpose32` from
// tile rows), dM pair-interleaved per 32 outputs ([4, O/32, panel/2, 32, 2]: a block's pairs one
// contiguous run), and adds the products into its own sums: the same sums in the same order
// whichever thread ran it. On the tiles (kU not kVector) the products are `WeightGrad`'s: 16
// channels x 32 tiles of V an A tile, 16 dM pair rows of 16 outputs a B tile.
template <Units kU>
ffi::Error WinogradWeightGrad(ffi::ThreadPool pool, ffi::AnyBuffer xb, ffi::AnyBuffer dyb,
                              ffi::AnyBuffer keepb, int64_t panel, int64_t groups_wanted,
                              int64_t top, int64_t left, int64_t masked, ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Result<ffi::AnyBuffer> db) {
  const auto xd = xb.dimensions();
  const auto dd = dyb.dimensions();
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3];
  const int64_t ho = dd[1], wo = dd[2], o = dd[3];
  if (dd[0] != n || c % 32 || o % 32 || panel <= 0 || panel % 32 || top < 0 || left < 0 ||
      ho <= 0 || wo <= 0 || dw->element_count() != 9 * c * o || db->element_count() != o ||
      (masked && keepb.element_count() != dyb.element_count()))
    return ffi::Error::InvalidArgument(
        "bf16_winograd_weight_grad: C and O must be multiples of 32, N as x's, dw 3 x 3 x C x O, "
        "db O, the panel a positive multiple of 32 tiles, the mask dy's shape");
  const uint16_t* x = reinterpret_cast<const uint16_t*>(xb.untyped_data());
  const uint16_t* d = reinterpret_cast<const uint16_t*>(dyb.untyped_data());
  const uint16_t* keep = masked ? reinterpret_cast<const uint16_t*>(keepb.untyped_data()) : nullptr;
  const int64_t th = (ho + 1) / 2, tw = (wo + 1) / 2, tiles = n * th * tw;
  const int64_t panels = (tiles + panel - 1) / panel, cb = c / 32, obs = o / 32, co = c * o;
  const int64_t groups = std::clamp<int64_t>(groups_wanted, 1, panels);
  float* du = Scratch<float>(0, groups * 16 * co);  // dU [group, 16, C, O], the caller's
  float* bias = reinterpret_cast<float*>(db->untyped_data());
  const Permutes pm;
  // dy's 16 values at offset `at` (an element index of dy), where keep's are positive; zeros
  // where at < 0 (off the map).
  const auto dy16 = [&](int64_t at, int64_t o0) {
    if (at < 0) return _mm512_setzero_ps();
    __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + at + o0));
    if (keep) bits = _mm256_maskz_mov_epi16(Positive16(keep + at + o0), bits);
    return Widen(bits);
  };
  const auto along = [](int r, __m512 p0, __m512 p1) {  // A's row r applied to (p0, p1)
    switch (r) {
      case 0: return p0;
      case 1: return _mm512_add_ps(p0, p1);
      case 2: return _mm512_sub_ps(p0, p1);
      default:  // -p1 exactly (a sign flip, as XLA's negation: -0 stays -0)
        return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(p1),
                                                     _mm512_set1_epi32(INT32_MIN)));
    }
  };
  Parallel(pool, 4 * groups + 1, [&](int64_t unit) {
    if (unit == 4 * groups) {  // db: every dy once, in row order
      std::memset(bias, 0, sizeof(float) * o);
      for (int64_t r = 0; r < n * ho * wo; ++r)
        for (int64_t o0 = 0; o0 < o; o0 += 16)
          _mm512_storeu_ps(bias + o0, _mm512_add_ps(_mm512_loadu_ps(bias + o0), dy16(r * o, o0)));
      return;
    }
    const int a = static_cast<int>(unit % 4);
    const int64_t grp = unit / 4;
    float* acc = du + (grp * 16 + 4 * a) * co;  // this row's 4 positions
    std::memset(acc, 0, sizeof(float) * 4 * co);
    uint16_t* vt = Scratch<uint16_t>(1, 4 * c * panel);   // V, [4, C, panel]
    uint16_t* rows = Scratch<uint16_t>(2, 4 * 32 * c);    // V of 32 tiles, [4, 32, C]
    uint16_t* dp = Scratch<uint16_t>(3, 4 * panel * o);   // dM, [4, O/32, panel/2, 32, 2]
    for (int64_t p = grp * panels / groups; p < (grp + 1) * panels / groups; ++p) {
      const int64_t q0 = p * panel;
      TileWalk tile(th, tw, q0);
      for (int64_t s0 = 0; s0 < panel; s0 += 32) {
        bool live[32];
        for (int i = 0; i < 32; ++i, tile.Next()) {
          live[i] = q0 + s0 + i < tiles;
          if (!live[i]) continue;
          // Row a of B^T d: its two taps' input rows, all four columns (nullptr: padding).
          const uint16_t* px[2][4];
          for (int u = 0; u < 2; ++u)
            for (int j = 0; j < 4; ++j) {
              const int64_t yy = 2 * tile.ty + kBt[a][u] - top, xx = 2 * tile.tx + j - left;
              px[u][j] = yy < 0 || yy >= h || xx < 0 || xx >= w
                             ? nullptr : x + ((tile.img * h + yy) * w + xx) * c;
            }
          for (int64_t c0 = 0; c0 < c; c0 += 16) {
            __m512 r[4];  // (B^T d)[a][j]: over the tile's rows first, as winograd._input_tiles
            for (int j = 0; j < 4; ++j) {
              const auto at = [&](int u) {
                return px[u][j] ? Widen(_mm256_loadu_si256(
                                      reinterpret_cast<const __m256i*>(px[u][j] + c0)))
                                : _mm512_setzero_ps();
              };
              r[j] = BtRow(a, at(0), at(1));
            }
            for (int b = 0; b < 4; ++b)
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + (b * 32 + i) * c + c0),
                                  (__m256i)_mm512_cvtneps_pbh(BtRow(b, r[kBt[b][0]], r[kBt[b][1]])));
          }
        }
        const uint16_t* blk[32];
        for (int b = 0; b < 4; ++b)
          for (int64_t ci = 0; ci < cb; ++ci) {
            for (int i = 0; i < 32; ++i) blk[i] = live[i] ? rows + (b * 32 + i) * c + ci * 32 : nullptr;
            Transpose32(pm, blk, vt + (b * c + ci * 32) * panel + s0, panel);
          }
      }
      // dM[a][b] = (A dy A^T)[a][b]: A's row a is (1, 0), (1, 1), (1, -1), (0, -1) over dy's rows.
      tile = TileWalk(th, tw, q0);
      for (int64_t q = 0; q < panel; q += 2) {
        int64_t at[2][4];  // each tile's dy offsets (rows 0, 1 x columns 0, 1), -1 off the map
        for (int e = 0; e < 2; ++e, tile.Next())
          for (int pq = 0; pq < 4; ++pq) {
            const int64_t yy = 2 * tile.ty + pq / 2, xx = 2 * tile.tx + pq % 2;
            at[e][pq] = q0 + q + e >= tiles || yy >= ho || xx >= wo
                            ? -1 : ((tile.img * ho + yy) * wo + xx) * o;
          }
        for (int64_t o0 = 0; o0 < o; o0 += 16) {
          __m512 r[2][2];  // [tile][column]: A's row a over dy's rows
          for (int e = 0; e < 2; ++e) {
            r[e][0] = along(a, dy16(at[e][0], o0), dy16(at[e][2], o0));
            r[e][1] = along(a, dy16(at[e][1], o0), dy16(at[e][3], o0));
          }
          for (int b = 0; b < 4; ++b) {
            const __m512i lo = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(along(b, r[0][0], r[0][1])));
            const __m512i hi = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(along(b, r[1][0], r[1][1])));
            _mm512_storeu_si512(
                reinterpret_cast<void*>(dp + b * panel * o + ((o0 / 32) * (panel / 2) + q / 2) * 64 +
                                        (o0 % 32) * 2),
                _mm512_permutex2var_epi16(lo, pm.pair0, hi));
          }
        }
      }
      for (int b = 0; b < 4; ++b)
        for (int64_t ci = 0; ci < cb; ++ci)
          for (int64_t ob = 0; ob < obs; ++ob) {
            const uint16_t* bp = dp + b * panel * o + ob * (panel / 2) * 64;
            if constexpr (kU != Units::kVector) {
              TileSums<kU>(acc + b * co + ci * 32 * o + ob * 32, o, vt + (b * c + ci * 32) * panel,
                           panel, bp, 64, panel);
              continue;
            }
            for (int64_t i0 = 0; i0 < 32; i0 += 8) {
              float* g = acc + b * co + (ci * 32 + i0) * o + ob * 32;
              __m512 sums[8][2];
#pragma GCC unroll 8
              for (int i = 0; i < 8; ++i) {
                sums[i][0] = _mm512_loadu_ps(g + i * o);
                sums[i][1] = _mm512_loadu_ps(g + i * o + 16);
              }
              Strip(sums, vt + (b * c + ci * 32 + i0) * panel, panel, bp, bp + 32, 64, panel / 2);
#pragma GCC unroll 8
              for (int i = 0; i < 8; ++i) {
                _mm512_storeu_ps(g + i * o, sums[i][0]);
                _mm512_storeu_ps(g + i * o + 16, sums[i][1]);
              }
            }
          }
    }
  }, kU == Units::kTiles);
  for (int64_t grp = 1; grp < groups; ++grp)  // the groups' sums, in group order
    for (int64_t e = 0; e < 16 * co; ++e) du[e] += du[grp * 16 * co + e];
  // dw = G^T dU G: over the tile's rows (a), then its columns (b), as winograd.weight_grad.
  float* out = reinterpret_cast<float*>(dw->untyped_data());
  Parallel(pool, cb, [&](int64_t ci) {
    const __m512 h = _mm512_set1_ps(0.5f);
    const auto gt = [&](int i, __m512 p0, __m512 p1, __m512 p2, __m512 p3) {  // G^T's row i
      const __m512 a1 = _mm512_mul_ps(p1, h), a2 = _mm512_mul_ps(p2, h);
      return i == 0 ? _mm512_add_ps(_mm512_add_ps(p0, a1), a2)
             : i == 1 ? _mm512_sub_ps(a1, a2) : _mm512_add_ps(_mm512_add_ps(a1, a2), p3);
    };
    for (int64_t e = ci * 32 * o; e < (ci + 1) * 32 * o; e += 16) {
      __m512 u[16];
      for (int k = 0; k < 16; ++k) u[k] = _mm512_loadu_ps(du + k * co + e);
      for (int i = 0; i < 3; ++i) {
        __m512 r[4];  // rows[b][i]
        for (int b = 0; b < 4; ++b) r[b] = gt(i, u[b], u[4 + b], u[8 + b], u[12 + b]);
        for (int j = 0; j < 3; ++j) _mm512_storeu_ps(out + (i * 3 + j) * co + e, gt(j, r[0], r[1], r[2], r[3]));
      }
    }
  }, false);
  return ffi::Error::Success();
}

}  // namespace

// 1 where this process may use the AMX tile registers (asks Linux for them), else 0.
extern "C" int cxr_amx_enable() {
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? 1 : 0;
}

// The bindings, one per call (`CXR_HANDLERS` below defines each call for every `Units`).
#define CXR_GEOMETRY_ATTRS                  \
  .Attr<ffi::Span<const int64_t>>("offsets") \
      .Attr<int64_t>("panel")               \
      .Attr<int64_t>("top")                 \
      .Attr<int64_t>("left")                \
      .Attr<int64_t>("hp")                  \
      .Attr<int64_t>("wp")                  \
      .Attr<int64_t>("im2col")

#define CXR_FORWARD_BINDING                                                                   \
  ffi::Ffi::Bind()                                                                            \
      .Ctx<ffi::ThreadPool>()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                                  \
      .Arg<ffi::AnyBuffer>()                                                                  \
      .Arg<ffi::Buffer<ffi::F32>>()                                                           \
      .Arg<ffi::AnyBuffer>() CXR_GEOMETRY_ATTRS.Attr<int64_t>("flip").Attr<int64_t>("relu") \
      .Attr<int64_t>("masked")                                                                \
      .Ret<ffi::AnyBuffer>()

#define CXR_WEIGHT_GRAD_BINDING                                                    \
  ffi::Ffi::Bind()                                                                 \
      .Ctx<ffi::ThreadPool>()                                                      \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Arg<ffi::AnyBuffer>() CXR_GEOMETRY_ATTRS.Attr<int64_t>("masked")            \
      .Ret<ffi::AnyBuffer>()                                                       \
      .Ret<ffi::AnyBuffer>()

#define CXR_WINOGRAD_BINDING                    \
  ffi::Ffi::Bind()                              \
      .Ctx<ffi::ThreadPool>()                   \
      .Arg<ffi::AnyBuffer>()                    \
      .Arg<ffi::AnyBuffer>()                    \
      .Arg<ffi::Buffer<ffi::F32>>()             \
      .Arg<ffi::AnyBuffer>()                    \
      .Attr<int64_t>("panel")                   \
      .Attr<int64_t>("top")                     \
      .Attr<int64_t>("left")                    \
      .Attr<int64_t>("flip")                    \
      .Attr<int64_t>("relu")                    \
      .Attr<int64_t>("masked")                  \
      .Ret<ffi::AnyBuffer>()

#define CXR_WINOGRAD_WEIGHT_GRAD_BINDING        \
  ffi::Ffi::Bind()                              \
      .Ctx<ffi::ThreadPool>()                   \
      .Arg<ffi::AnyBuffer>()                    \
      .Arg<ffi::AnyBuffer>()                    \
      .Arg<ffi::AnyBuffer>()                    \
      .Attr<int64_t>("panel")                   \
      .Attr<int64_t>("groups")                  \
      .Attr<int64_t>("top")                     \
      .Attr<int64_t>("left")                    \
      .Attr<int64_t>("masked")                  \
      .Ret<ffi::AnyBuffer>()                    \
      .Ret<ffi::AnyBuffer>()

// Each call for each of `Units`: the tiles (Amx), the vector units (Bf16), the tiles emulated
// (AmxEmulated).
#define CXR_HANDLERS(prefix, units)                                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(prefix##ConvForward, Forward<units>, CXR_FORWARD_BINDING);         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(prefix##ConvWeightGrad, WeightGrad<units>,                         \
                                CXR_WEIGHT_GRAD_BINDING);                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(prefix##WinogradForward, WinogradForward<units>,                   \
                                CXR_WINOGRAD_BINDING);                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(prefix##WinogradWeightGrad, WinogradWeightGrad<units>,             \
                                CXR_WINOGRAD_WEIGHT_GRAD_BINDING)

CXR_HANDLERS(CxrAmx, Units::kTiles);
CXR_HANDLERS(CxrBf16, Units::kVector);
CXR_HANDLERS(CxrAmxEmulated, Units::kEmulated);
