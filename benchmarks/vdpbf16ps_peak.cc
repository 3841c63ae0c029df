// The AVX512-BF16 vector units' own rate: VDPBF16PS on registers only (16 independent sums, no
// loads), on 1 and 2 threads. The ceiling the `avx512bf16` convolution formulation
// (cxr_jax/ops/amx.py) is read against (benchmarks/README.md, "The same kernel on AVX512-BF16's
// vector units").
//
//   c++ -O2 -mavx512f -mavx512bf16 -pthread benchmarks/vdpbf16ps_peak.cc -o /tmp/peak && /tmp/peak
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>
double run(long iters) {
  __m512 acc[16]; for (auto& a : acc) a = _mm512_setzero_ps();
  __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80), c = (__m512bh)_mm512_set1_epi32(0x3c003c00);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], b, c);
    asm volatile("" : "+v"(b));
  }
  float s = 0; for (auto& a : acc) s += _mm512_reduce_add_ps(a);
  return s;
}
int main() {
  long iters = 20000000;
  for (int threads : {1, 2}) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts; for (int t = 0; t < threads; ++t) ts.emplace_back([&]{ volatile double r = run(iters); (void)r; });
    for (auto& t : ts) t.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("%d threads: %.0f GFLOP/s vdpbf16ps\n", threads, threads * iters * 16.0 * 64 / s / 1e9);
  }
}
