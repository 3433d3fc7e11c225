// Helpers for loops the compiler vectorises on its own.
//
// IRDA_TARGET_CLONES compiles a function for AVX-512, AVX2 and baseline x86-64 and
// picks one at load time (gcc's function multi-versioning), so a plain source build
// is fast on any of them; elsewhere it is empty.
//
// IRDA_FMA_VARIANTS(DEFINE) does the same for code that fuses multiply-adds where it
// says so (mul_add, below): it expands DEFINE(target attribute, kFma) once per
// instruction set, kFma = true where the set has FMA (AVX-512, x86-64-v3: AVX2 + FMA),
// and gcc picks one version at load time. The surrogate's polynomials are chains of
// multiply-adds: fused, they take half the instructions and half the latency.
//
// IRDA_WIDTH_VARIANTS(DEFINE) is IRDA_FMA_VARIANTS with a third argument, the set's
// vector width in bytes (64 AVX-512, 32 AVX2, 16 baseline SSE2), for code whose register
// tiles are sized to the registers it has.
//
// exp_clamped(x) and log_positive(x) are exp and log in plain arithmetic (no library
// call), so a loop that calls them still vectorises: glibc's exp and log only have
// vector versions under -ffast-math, which would also break the infinity checks the
// kernels rely on.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// IRDA_CPU_ISA=avx2|avx512f|default (setup.py) builds one instruction set only, for benchmarks.
#if defined(IRDA_CPU_ISA_AVX512F)
#define IRDA_TARGET_CLONES __attribute__((target("avx512f")))
#define IRDA_FMA_VARIANTS(DEFINE) DEFINE(__attribute__((target("avx512f"))), true)
#define IRDA_WIDTH_VARIANTS(DEFINE) DEFINE(__attribute__((target("avx512f"))), true, 64)
#elif defined(IRDA_CPU_ISA_AVX2)
#define IRDA_TARGET_CLONES __attribute__((target("arch=x86-64-v3")))
#define IRDA_FMA_VARIANTS(DEFINE) DEFINE(__attribute__((target("arch=x86-64-v3"))), true)
#define IRDA_WIDTH_VARIANTS(DEFINE) DEFINE(__attribute__((target("arch=x86-64-v3"))), true, 32)
#elif defined(IRDA_CPU_ISA_DEFAULT)
#define IRDA_TARGET_CLONES
#define IRDA_FMA_VARIANTS(DEFINE) DEFINE(, false)
#define IRDA_WIDTH_VARIANTS(DEFINE) DEFINE(, false, 16)
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IRDA_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define IRDA_FMA_VARIANTS(DEFINE)                             \
  DEFINE(__attribute__((target("avx512f"))), true)            \
  DEFINE(__attribute__((target("arch=x86-64-v3"))), true)     \
  DEFINE(__attribute__((target("default"))), false)
#define IRDA_WIDTH_VARIANTS(DEFINE)                               \
  DEFINE(__attribute__((target("avx512f"))), true, 64)            \
  DEFINE(__attribute__((target("arch=x86-64-v3"))), true, 32)     \
  DEFINE(__attribute__((target("default"))), false, 16)
#else
#define IRDA_TARGET_CLONES
#if defined(__FMA__) || defined(__aarch64__)
#define IRDA_FMA_VARIANTS(DEFINE) DEFINE(, true)
#define IRDA_WIDTH_VARIANTS(DEFINE) DEFINE(, true, 16)
#else
#define IRDA_FMA_VARIANTS(DEFINE) DEFINE(, false)
#define IRDA_WIDTH_VARIANTS(DEFINE) DEFINE(, false, 16)
#endif
#endif

namespace irda {

// a * b + c, rounded once (kFma: an FMA instruction where the caller's target has one) or
// twice. Everything else is compiled with -ffp-contract=off: only these are fused, the
// same way in every loop that calls them, so forward and backward give the same bits.
template <bool kFma, typename T>
__attribute__((always_inline)) inline T mul_add(T a, T b, T c) {
  if constexpr (kFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// Horner's rule: ((p * x + c0) * x + c1) * x + ... with mul_add, each coefficient a double
// rounded to T.
template <bool kFma, typename T, typename... Coefficients>
__attribute__((always_inline)) inline T horner(T x, T p, Coefficients... c) {
  ((p = mul_add<kFma>(p, x, T(c))), ...);
  return p;
}

// The IEEE-754 layout of float / double and the constants both exp_clamped and
// log_positive use. shifter = 1.5 * 2^mantissa: adding it rounds to an integer that
// then sits in the low mantissa bits, which converts between integers and floats
// without a float<->int64 instruction (AVX2 has none). ln 2 is split so that
// k * ln2_hi is exact for |k| < 2^11 (double) / 2^8 (float).
template <typename T>
struct FloatLayout {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "float or double");
  static constexpr bool dbl = std::is_same<T, double>::value;
  using Bits = typename std::conditional<dbl, int64_t, int32_t>::type;
  static constexpr int mantissa = dbl ? 52 : 23;
  static constexpr int exponent_bits = dbl ? 11 : 8;
  static constexpr Bits bias = dbl ? 1023 : 127;
  static constexpr T shifter = dbl ? T(6755399441055744.0) : T(12582912.0);
  static constexpr T ln2_hi = dbl ? T(0.693147180369123816490) : T(0.693145751953125);
  static constexpr T ln2_lo = dbl ? T(1.90821492927058770002e-10) : T(1.428606765330187045e-06);

  __attribute__((always_inline)) static Bits to_bits(T x) {
    Bits b;
    std::memcpy(&b, &x, sizeof(T));
    return b;
  }
  __attribute__((always_inline)) static T from_bits(Bits b) {
    T x;
    std::memcpy(&x, &b, sizeof(T));
    return x;
  }
};

// exp(x), within a few ulp in float64 and float32, for x up to 709 / 88 (larger
// arguments are clamped there: callers keep them far below). Arguments below the
// smallest normal result are clamped to it (about 1e-308 / 1e-38): in a sum whose
// largest term is of order one such terms are below rounding anyway.
//   x = k ln2 + r, |r| <= ln2 / 2;  exp(x) = 2^k * exp(r), exp(r) by its Taylor series.
// k is rounded with the shifter and 2^k is built directly in the exponent bits.
// kFma: the rounding of k, the reduction and Horner's steps are fused multiply-adds.
// kClampAbove = false (exp_nonpositive) leaves out the upper clamp, for arguments that never
// reach it.
template <bool kFma, typename T, bool kClampAbove = true>
__attribute__((always_inline)) inline T exp_clamped(T x) {
  using L = FloatLayout<T>;
  constexpr bool dbl = L::dbl;
  constexpr T lowest = dbl ? T(-708.0) : T(-87.0);
  constexpr T highest = dbl ? T(709.0) : T(88.0);
  constexpr T log2e = T(1.4426950408889634);

  if constexpr (kClampAbove) {
    x = x < lowest ? lowest : (x > highest ? highest : x);
  } else {
    x = x < lowest ? lowest : x;
  }
  const T kd = mul_add<kFma>(x, log2e, L::shifter);  // round to nearest: k sits in the low mantissa bits
  const T k = kd - L::shifter;
  const T r = mul_add<kFma>(-k, L::ln2_lo, mul_add<kFma>(-k, L::ln2_hi, x));
  // Taylor coefficients 1 / j! from the highest degree down: degree 12 in float64
  // (truncation error below 2e-16 on |r| <= ln2 / 2), 7 in float32 (below 1e-9)
  const T p = dbl ? horner<kFma>(r, T(1.0 / 479001600), 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0)
                  : horner<kFma>(r, T(1.0 / 5040), 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0);
  // the bits of 2^k
  const T scale = L::from_bits(((L::to_bits(kd) - L::to_bits(L::shifter)) + L::bias) << L::mantissa);
  return p * scale;
}

// exp(x) for x <= 0, as the softmax weights exp(x - max) are: exp_clamped's bits (its upper
// clamp, which such arguments never reach, left out: a compare and a select fewer a term).
template <bool kFma, typename T>
__attribute__((always_inline)) inline T exp_nonpositive(T x) {
  return exp_clamped<kFma, T, false>(x);
}

// log(x) for a positive normal finite x, within a few ulp in float64 and float32.
//   x = 2^e * m, m in [sqrt(1/2), sqrt(2));  log(m) = 2 atanh(s), s = (m - 1) / (m + 1),
// by its series (|s| < 0.172). Integer <-> float conversions go through the exponent
// bits and the shifter, as in exp_clamped. kFma: Horner's steps and the sums of products
// are fused multiply-adds.
template <bool kFma, typename T>
__attribute__((always_inline)) inline T log_positive(T x) {
  using L = FloatLayout<T>;
  using Bits = typename L::Bits;
  constexpr bool dbl = L::dbl;
  constexpr Bits mantissa_mask = (Bits(1) << L::mantissa) - 1;
  constexpr Bits exponent_mask = (Bits(1) << L::exponent_bits) - 1;
  constexpr T sqrt2 = T(1.4142135623730951);

  const Bits xb = L::to_bits(x);
  Bits e = ((xb >> L::mantissa) & exponent_mask) - L::bias;
  T m = L::from_bits((xb & mantissa_mask) | (L::bias << L::mantissa));  // m in [1, 2)
  const bool high = m > sqrt2;
  m = high ? m * T(0.5) : m;
  e = high ? e + 1 : e;
  const T ef = L::from_bits(e + L::to_bits(L::shifter)) - L::shifter;  // e as a floating-point number
  const T s = (m - T(1)) / (m + T(1));
  const T z = s * s;
  // atanh's series sum_j s^(2j) / (2j + 1), from the highest term down: up to s^21 in float64
  // (truncation below 1e-17 for |s| < 0.172), up to s^9 in float32 (below 1e-9)
  const T p = dbl ? horner<kFma>(z, T(1.0 / 21), 1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13, 1.0 / 11, 1.0 / 9, 1.0 / 7,
                                 1.0 / 5, 1.0 / 3)
                  : horner<kFma>(z, T(1.0 / 9), 1.0 / 7, 1.0 / 5, 1.0 / 3);
  const T two_s = T(2) * s;
  const T log_m = mul_add<kFma>(two_s * z, p, two_s);
  return mul_add<kFma>(ef, L::ln2_hi, mul_add<kFma>(ef, L::ln2_lo, log_m));
}

}  // namespace irda
