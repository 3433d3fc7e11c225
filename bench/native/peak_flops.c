/* The core's floating-point peak, for bench/surrogate_bound.py: a tight loop of
 * independent fused multiply-adds (and, separately, of multiplies and adds, which is
 * what the kernels get: they are built with -ffp-contract=off) over vector registers.
 *
 *   cc -O2 -mavx2 -mfma peak_flops.c -o peak && ./peak      (prints GFLOP/s, float32)
 *   cc -O2 -mavx512f    peak_flops.c -o peak && ./peak
 *
 * Twelve independent chains hide the FMA latency (4 cycles, 2 pipes on current x86). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define WIDTH 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define MUL _mm512_mul_ps
#define ADD _mm512_add_ps
#define ADDV(a, b) _mm512_add_ps(a, b)
static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define WIDTH 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define MUL _mm256_mul_ps
#define ADD _mm256_add_ps
static float hsum(vec v) {
  float x[8];
  _mm256_storeu_ps(x, v);
  return x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7];
}
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define CHAINS 12
static double run(int fused, long iters) {
  vec acc[CHAINS];
  const vec m = SET1(0.999999f), c = SET1(1e-7f);
  for (int i = 0; i < CHAINS; ++i) acc[i] = SET1(1.0f + i);
  double t0 = now();
  for (long it = 0; it < iters; ++it) {
    if (fused) {
#pragma GCC unroll 12
      for (int i = 0; i < CHAINS; ++i) acc[i] = FMA(acc[i], m, c);
    } else {  /* half the chains multiply, half add: both pipes busy, one flop per lane each */
#pragma GCC unroll 6
      for (int i = 0; i < CHAINS / 2; ++i) acc[i] = MUL(acc[i], m);
#pragma GCC unroll 6
      for (int i = CHAINS / 2; i < CHAINS; ++i) acc[i] = ADD(acc[i], c);
    }
  }
  double dt = now() - t0;
  float sink = 0;
  for (int i = 0; i < CHAINS; ++i) sink += hsum(acc[i]);
  if (sink == 12345.0f) printf("#");
  double flops = (double)iters * CHAINS * WIDTH * (fused ? 2 : 1);
  return flops / dt / 1e9;
}

int main(void) {
  long iters = 20000000;
  double best_fma = 0, best_muladd = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double f = run(1, iters), s = run(0, iters);
    if (f > best_fma) best_fma = f;
    if (s > best_muladd) best_muladd = s;
  }
  printf("{\"width\": %d, \"fma_gflops\": %.2f, \"mul_add_gflops\": %.2f}\n", WIDTH, best_fma, best_muladd);
  return 0;
}
