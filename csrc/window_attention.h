// Causal attention over a short window of tokens, shared by the window_attention op (window_attention.cpp) and the
// whole-window blocks (window_blocks.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace lewm_fast {

// Unnormalised softmax weights of one query head q (dh values) over `visible` keys, key_at(j) giving key j's head
// slice: w[j] = exp(q.k_j * scale - max_j); returns sum_j w[j]. Shared by the forward (attend_group) and the backward
// (window_attention_backward.cpp), so both see the same probabilities bit for bit.
template <typename scalar_t, typename KeyAt>
__attribute__((always_inline)) inline scalar_t softmax_weights(const scalar_t* q, KeyAt key_at, int64_t visible,
                                                               int64_t dh, scalar_t scale, scalar_t* w) {
  scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    const scalar_t* k = key_at(j);
    scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t e = 0; e < dh; ++e) acc += q[e] * k[e];
    w[j] = acc * scale;
    mx = std::max(mx, w[j]);
  }
  scalar_t total = 0;
  for (int64_t j = 0; j < visible; ++j) {
    w[j] = std::exp(w[j] - mx);
    total += w[j];
  }
  return total;
}

// One query row against p shared-prefix keys and `own` own keys, for `heads` heads of width dh: o = softmax(q.k *
// dh^-0.5) v. Key j starts at keys[j]; its value sits kv_off_pre (prefix keys) or kv_off_own (own keys) after it.
// score: scratch of at least heads * (p + own) + 16 values. Instantiated for float and double.
template <typename scalar_t>
void attend_group(const scalar_t* q, const scalar_t* const* keys, int64_t p, int64_t own, int64_t heads, int64_t dh,
                  int64_t kv_off_pre, int64_t kv_off_own, scalar_t* score, scalar_t* o);

// Checks prefix_qkv (B, P, width): B divides the M rows of qkv_like, whose dtype it shares.
void check_prefix(const at::Tensor& pre, const at::Tensor& qkv_like, int64_t m, int64_t width);

}  // namespace lewm_fast
