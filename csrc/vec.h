// 16-lane float32 vectors for the CPU kernels (GCC vector extensions): loads, stores, a horizontal sum and exp.
// Everything here is inline: it is compiled into each target_clones variant (AVX-512, AVX2, baseline x86-64) of the
// functions that call it.
#pragma once

#include <cstdint>
#include <cstring>

namespace lewm_fast {

// 16 floats as one value (GCC vector extension: one zmm register on AVX-512, split on narrower targets).
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

inline v16f load16(const float* x) {
  v16f v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

inline void store16(float* x, v16f v) { std::memcpy(x, &v, sizeof v); }

inline float sum16(v16f v) {  // halves added pairwise (no __builtin_shufflevector: GCC < 12 lacks it)
  v8f lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const v8f s8 = lo + hi;
  v4f a, b;
  std::memcpy(&a, &s8, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof a, sizeof b);
  const v4f s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// exp(x) for x <= 0 (softmax after subtracting the maximum), to about 1 ulp: 2^n * P(r), r = x - n ln2 in
// [-ln2/2, ln2/2], P the degree-6 Taylor polynomial; x below -87 gives exp(-87) ~ 1.6e-38 instead of a denormal.
inline v16f exp16_nonpositive(v16f x) {
  const v16f lo = v16f{} - 87.0f;
  x = x < lo ? lo : x;
  const v16f magic = v16f{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const v16f n = (x * 1.44269504088896341f + magic) - magic;
  const v16f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 split in two for an exact n * ln2_hi
  v16f poly = v16f{} + (1.0f / 720.0f);
  poly = poly * r + (1.0f / 120.0f);
  poly = poly * r + (1.0f / 24.0f);
  poly = poly * r + (1.0f / 6.0f);
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16f scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return poly * scale;
}

}  // namespace lewm_fast
