// The folded flush's register tiles (bin_stats.cpp, folded_rows) written with x86 vector
// intrinsics, for one instruction set per inclusion: bin_stats.cpp includes this file twice,
// under `#pragma GCC target("arch=x86-64-v3")` with IRDA_TILE_BYTES 32 (AVX2 + FMA, namespace
// avx2_tiles) and under `#pragma GCC target("avx512f")` with IRDA_TILE_BYTES 64 (namespace
// avx512_tiles). Why intrinsics: gcc's own vectorisation of the scalar tile kept its
// accumulators in registers only for float32 under AVX-512; under AVX2 (16 registers) and for
// float64 it spilled and shuffled, flushes 2-6 times slower than the same arithmetic here.
// Why the pragma and not a target attribute: an intrinsic is an always-inline function with
// its own target, which gcc inlines only into functions of that target, so every function
// between the entry point and the intrinsics must carry it, templates included.
//
// The arithmetic is the scalar tile's, element for element: a_v[r] = w_v x_v[d0 + r] rounded
// once, then acc += a_v[r] x_v[e] as one fused multiply-add per vector in the vectors' order,
// then keep * old + acc (a product and a sum, each rounded) or acc alone when keep is 0. So the
// bits are those of every other instruction set.
//
// No include guard: meant to be included more than once, with the macros above set.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace irda {
namespace IRDA_TILE_NAMESPACE {

template <typename T>
struct Lanes;

#if IRDA_TILE_BYTES == 32
template <>
struct Lanes<float> {
  using V = __m256;
  static constexpr int64_t L = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V splat(float a) { return _mm256_set1_ps(a); }
  static V zero() { return _mm256_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V scale_add(V k, V old, V acc) { return _mm256_add_ps(_mm256_mul_ps(k, old), acc); }
};
template <>
struct Lanes<double> {
  using V = __m256d;
  static constexpr int64_t L = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V splat(double a) { return _mm256_set1_pd(a); }
  static V zero() { return _mm256_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V scale_add(V k, V old, V acc) { return _mm256_add_pd(_mm256_mul_pd(k, old), acc); }
};
// 16 registers: R = 6 rows x 2 vectors of accumulators, 2 for the vector's columns, 1 for a factor
constexpr int64_t kTileRows = 6;
#elif IRDA_TILE_BYTES == 64
template <>
struct Lanes<float> {
  using V = __m512;
  static constexpr int64_t L = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V splat(float a) { return _mm512_set1_ps(a); }
  static V zero() { return _mm512_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V scale_add(V k, V old, V acc) { return _mm512_add_ps(_mm512_mul_ps(k, old), acc); }
};
template <>
struct Lanes<double> {
  using V = __m512d;
  static constexpr int64_t L = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V splat(double a) { return _mm512_set1_pd(a); }
  static V zero() { return _mm512_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V scale_add(V k, V old, V acc) { return _mm512_add_pd(_mm512_mul_pd(k, old), acc); }
};
// 32 registers: R = 8 rows x 2 vectors (12 rows measured no faster)
constexpr int64_t kTileRows = 8;
#else
#error "IRDA_TILE_BYTES must be 32 or 64"
#endif

// two vectors of columns a tile
constexpr int64_t kTileVectors = 2;

// Rows [d0, d0 + R) x columns [e0, e0 + kTileVectors L) of the block, the factors a_v[r] read
// from scaled[v R + r].
template <typename T, int64_t R>
inline __attribute__((always_inline)) void tile(T* block, const T* const* vecs, const T* scaled, int64_t M, int64_t D,
                                                int64_t d0, int64_t e0, T keep) {
  using X = Lanes<T>;
  constexpr int64_t NV = kTileVectors;
  typename X::V acc[R][NV];
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < NV; ++j) acc[r][j] = X::zero();
  }
  for (int64_t v = 0; v < M; ++v) {
    typename X::V x[NV];
    for (int64_t j = 0; j < NV; ++j) x[j] = X::load(vecs[v] + e0 + j * X::L);
    for (int64_t r = 0; r < R; ++r) {
      const typename X::V a = X::splat(scaled[v * R + r]);
      for (int64_t j = 0; j < NV; ++j) acc[r][j] = X::fma(a, x[j], acc[r][j]);
    }
  }
  const typename X::V k = X::splat(keep);
  for (int64_t r = 0; r < R; ++r) {
    T* row = block + (d0 + r) * D + e0;
    for (int64_t j = 0; j < NV; ++j) {
      X::store(row + j * X::L, keep == T(0) ? acc[r][j] : X::scale_add(k, X::load(row + j * X::L), acc[r][j]));
    }
  }
}

// Rows [d0, d0 + R) of the block, every column: the factors, whole tiles, then the columns left
// over one at a time in scalar arithmetic (the same operations).
template <typename T, int64_t R>
inline __attribute__((always_inline)) void row_tiles(T* block, const T* const* vecs, const T* weights, int64_t M,
                                                     int64_t D, int64_t d0, T keep, T* scaled) {
  for (int64_t v = 0; v < M; ++v) {
    for (int64_t r = 0; r < R; ++r) scaled[v * R + r] = weights[v] * vecs[v][d0 + r];
  }
  constexpr int64_t C = kTileVectors * Lanes<T>::L;
  const int64_t whole_cols = D / C * C;
  for (int64_t e0 = 0; e0 < whole_cols; e0 += C) tile<T, R>(block, vecs, scaled, M, D, d0, e0, keep);
  for (int64_t e = whole_cols; e < D; ++e) {
    T acc[R] = {};
    for (int64_t v = 0; v < M; ++v) {
      for (int64_t r = 0; r < R; ++r) acc[r] = std::fma(scaled[v * R + r], vecs[v][e], acc[r]);
    }
    for (int64_t r = 0; r < R; ++r) {
      T& out = block[(d0 + r) * D + e];
      out = keep == T(0) ? acc[r] : keep * out + acc[r];
    }
  }
}

// Rows [d0, d1) of a bin's block: tiles of kTileRows rows, then of 4, 2 and 1 for the rest.
template <typename T>
void folded_rows(T* block, const T* const* vecs, const T* weights, int64_t M, int64_t D, int64_t d0, int64_t d1,
                 T keep) {
  std::vector<T> scaled(static_cast<size_t>(M * kTileRows));
  T* s = scaled.data();
  int64_t d = d0;
  for (; d + kTileRows <= d1; d += kTileRows) {
    for (int64_t r = kTileRows; r < 2 * kTileRows && d + r < d1; ++r) {  // the next tile's rows, from memory
      const char* next = reinterpret_cast<const char*>(block + (d + r) * D);
      for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(next + off, 1);
    }
    row_tiles<T, kTileRows>(block, vecs, weights, M, D, d, keep, s);
  }
  for (; d + 4 <= d1; d += 4) row_tiles<T, 4>(block, vecs, weights, M, D, d, keep, s);
  for (; d + 2 <= d1; d += 2) row_tiles<T, 2>(block, vecs, weights, M, D, d, keep, s);
  for (; d < d1; ++d) row_tiles<T, 1>(block, vecs, weights, M, D, d, keep, s);
}

}  // namespace IRDA_TILE_NAMESPACE
}  // namespace irda
