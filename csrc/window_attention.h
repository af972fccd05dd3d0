// Causal attention over a short window of tokens, shared by the window_attention op (window_attention.cpp) and the
// whole-window blocks (window_blocks.cpp).
#pragma once

#include <ATen/ATen.h>

namespace lewm_fast {

// One query row against p shared-prefix keys and `own` own keys, for `heads` heads of width dh: o = softmax(q.k *
// dh^-0.5) v. Key j starts at keys[j]; its value sits kv_off_pre (prefix keys) or kv_off_own (own keys) after it.
// score: scratch of at least heads * (p + own) + 16 values. Instantiated for float and double.
template <typename scalar_t>
void attend_group(const scalar_t* q, const scalar_t* const* keys, int64_t p, int64_t own, int64_t heads, int64_t dh,
                  int64_t kv_off_pre, int64_t kv_off_own, scalar_t* score, scalar_t* o);

// Checks prefix_qkv (B, P, width): B divides the M rows of qkv_like, whose dtype it shares.
void check_prefix(const at::Tensor& pre, const at::Tensor& qkv_like, int64_t m, int64_t width);

}  // namespace lewm_fast
