// Helpers for loops the compiler vectorises on its own.
//
// IRDA_TARGET_CLONES compiles a function for AVX-512, AVX2 and baseline x86-64 and
// picks one at load time (gcc's function multi-versioning), so a plain source build
// is fast on any of them; elsewhere it is empty.
//
// exp_clamped(x) and log_positive(x) are exp and log in plain arithmetic (no library
// call), so a loop that calls them still vectorises: glibc's exp and log only have
// vector versions under -ffast-math, which would also break the infinity checks the
// kernels rely on.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IRDA_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IRDA_TARGET_CLONES
#endif

namespace irda {

// exp(x), within a few ulp in float64 and float32, for x up to 709 / 88 (larger
// arguments are clamped there: callers keep them far below). Arguments below the
// smallest normal result are clamped to it (about 1e-308 / 1e-38): in a sum whose
// largest term is of order one such terms are below rounding anyway.
//   x = k ln2 + r, |r| <= ln2 / 2;  exp(x) = 2^k * exp(r), exp(r) by its Taylor series.
// k is rounded by the 1.5 * 2^mantissa shifter (no float->int conversion, which AVX2
// lacks for int64 lanes), and 2^k is built directly in the exponent bits.
template <typename T>
__attribute__((always_inline)) inline T exp_clamped(T x) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "float or double");
  constexpr bool dbl = std::is_same<T, double>::value;
  using Bits = typename std::conditional<dbl, int64_t, int32_t>::type;
  constexpr T lowest = dbl ? T(-708.0) : T(-87.0);
  constexpr T highest = dbl ? T(709.0) : T(88.0);
  constexpr T log2e = T(1.4426950408889634);
  // ln 2 split so that k * ln2_hi is exact for |k| < 2^11 (double) / 2^8 (float)
  constexpr T ln2_hi = dbl ? T(0.693147180369123816490) : T(0.693145751953125);
  constexpr T ln2_lo = dbl ? T(1.90821492927058770002e-10) : T(1.428606765330187045e-06);
  constexpr T shifter = dbl ? T(6755399441055744.0) : T(12582912.0);  // 1.5 * 2^52, 1.5 * 2^23
  constexpr int mantissa = dbl ? 52 : 23;
  constexpr Bits bias = dbl ? 1023 : 127;

  x = x < lowest ? lowest : (x > highest ? highest : x);
  const T kd = x * log2e + shifter;  // round to nearest: k sits in the low mantissa bits
  const T k = kd - shifter;
  const T r = (x - k * ln2_hi) - k * ln2_lo;
  T p;
  if (dbl) {  // degree 12: truncation error below 2e-16 on |r| <= ln2 / 2
    p = T(1.0 / 479001600);
    p = p * r + T(1.0 / 39916800);
    p = p * r + T(1.0 / 3628800);
    p = p * r + T(1.0 / 362880);
    p = p * r + T(1.0 / 40320);
    p = p * r + T(1.0 / 5040);
    p = p * r + T(1.0 / 720);
    p = p * r + T(1.0 / 120);
    p = p * r + T(1.0 / 24);
    p = p * r + T(1.0 / 6);
    p = p * r + T(0.5);
  } else {  // degree 7: truncation error below 1e-9
    p = T(1.0 / 5040);
    p = p * r + T(1.0 / 720);
    p = p * r + T(1.0 / 120);
    p = p * r + T(1.0 / 24);
    p = p * r + T(1.0 / 6);
    p = p * r + T(0.5);
  }
  p = p * r + T(1);
  p = p * r + T(1);
  Bits kb, sb;
  std::memcpy(&kb, &kd, sizeof(T));
  std::memcpy(&sb, &shifter, sizeof(T));
  const Bits e = ((kb - sb) + bias) << mantissa;  // the bits of 2^k
  T scale;
  std::memcpy(&scale, &e, sizeof(T));
  return p * scale;
}

// log(x) for a positive normal finite x, within a few ulp in float64 and float32.
//   x = 2^e * m, m in [sqrt(1/2), sqrt(2));  log(m) = 2 atanh(s), s = (m - 1) / (m + 1),
// by its series (|s| < 0.172). Integer <-> float conversions go through the exponent
// bits and the 1.5 * 2^mantissa shifter, as in exp_clamped.
template <typename T>
__attribute__((always_inline)) inline T log_positive(T x) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "float or double");
  constexpr bool dbl = std::is_same<T, double>::value;
  using Bits = typename std::conditional<dbl, int64_t, int32_t>::type;
  constexpr int mantissa = dbl ? 52 : 23;
  constexpr Bits bias = dbl ? 1023 : 127;
  constexpr Bits mantissa_mask = (Bits(1) << mantissa) - 1;
  constexpr T ln2_hi = dbl ? T(0.693147180369123816490) : T(0.693145751953125);
  constexpr T ln2_lo = dbl ? T(1.90821492927058770002e-10) : T(1.428606765330187045e-06);
  constexpr T shifter = dbl ? T(6755399441055744.0) : T(12582912.0);
  constexpr T sqrt2 = T(1.4142135623730951);

  Bits xb;
  std::memcpy(&xb, &x, sizeof(T));
  Bits e = ((xb >> mantissa) & ((Bits(1) << (dbl ? 11 : 8)) - 1)) - bias;
  const Bits mb = (xb & mantissa_mask) | (bias << mantissa);  // m in [1, 2)
  T m;
  std::memcpy(&m, &mb, sizeof(T));
  const bool high = m > sqrt2;
  m = high ? m * T(0.5) : m;
  e = high ? e + 1 : e;
  Bits sb;
  std::memcpy(&sb, &shifter, sizeof(T));
  const Bits eb = e + sb;
  T ef;
  std::memcpy(&ef, &eb, sizeof(T));
  ef = ef - shifter;  // e as a floating-point number
  const T s = (m - T(1)) / (m + T(1));
  const T z = s * s;
  T p;
  if (dbl) {  // terms up to s^21: truncation below 1e-17 for |s| < 0.172
    p = T(1.0 / 21);
    p = p * z + T(1.0 / 19);
    p = p * z + T(1.0 / 17);
    p = p * z + T(1.0 / 15);
    p = p * z + T(1.0 / 13);
    p = p * z + T(1.0 / 11);
    p = p * z + T(1.0 / 9);
    p = p * z + T(1.0 / 7);
    p = p * z + T(1.0 / 5);
  } else {  // up to s^9: truncation below 1e-9
    p = T(1.0 / 9);
    p = p * z + T(1.0 / 7);
    p = p * z + T(1.0 / 5);
  }
  p = p * z + T(1.0 / 3);
  const T log_m = T(2) * s + T(2) * s * z * p;
  return ef * ln2_hi + (log_m + ef * ln2_lo);
}

}  // namespace irda
