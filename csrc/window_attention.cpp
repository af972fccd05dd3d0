// Causal attention of the LeWM predictor over a short window of tokens on CPU (float32/float64):
//
// window_attention(qkv (M, S, 3*heads*dh), prefix_qkv (B, P, 3*heads*dh)?, heads, num_queries) -> (M, q, heads*dh)
//   Causal multi-head attention read straight from the to_qkv output layout [q | k | v] (heads-major inside each),
//   with an optional prefix of window tokens shared by each group of M / B consecutive rows (the part of a CEM
//   window that is the same for every candidate). Own token i sits at window position P+i and sees positions <= P+i;
//   the output holds own tokens S-q..S-1.
#include "window_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace lewm_fast {
namespace {

// attend_group for any dtype and head width (see window_attention.h).
template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void attend_group_scalar(const scalar_t* q, const scalar_t* const* keys, int64_t p, int64_t own, int64_t heads,
                         int64_t dh, int64_t kv_off_pre, int64_t kv_off_own, scalar_t* score, scalar_t* o) {
  const int64_t visible = p + own;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(dh));
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t off = h * dh;
    const scalar_t total =
        softmax_weights(q + off, [&](int64_t j) { return keys[j] + off; }, visible, dh, scale, score);
    const scalar_t inv = scalar_t(1) / total;
    scalar_t* oh = o + off;
    std::fill(oh, oh + dh, scalar_t(0));
    for (int64_t j = 0; j < visible; ++j) {
      const scalar_t* v = keys[j] + (j < p ? kv_off_pre : kv_off_own) + off;
      const scalar_t pj = score[j] * inv;
#pragma omp simd
      for (int64_t e = 0; e < dh; ++e) oh[e] += pj * v[e];
    }
  }
}

// attend_group_scalar for float32 and dh a multiple of 16: all (head, key) scores first, one vector exp pass over
// them, then the weighted values; dot products and outputs run 16 lanes wide.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void attend_group_vec(const float* q, const float* const* keys, int64_t p, int64_t own, int64_t heads, int64_t dh,
                      int64_t kv_off_pre, int64_t kv_off_own, float* score, float* o) {
  const int64_t visible = p + own, n = heads * visible;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t off = h * dh;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      const float* k = keys[j] + off;
      v16f acc = load16(q + off) * load16(k);
      for (int64_t e = 16; e < dh; e += 16) acc += load16(q + off + e) * load16(k + e);
      const float sj = sum16(acc) * scale;
      score[h * visible + j] = sj;
      mx = std::max(mx, sj);
    }
    for (int64_t j = 0; j < visible; ++j) score[h * visible + j] -= mx;
  }
  for (int64_t i = 0; i < n; i += 16) store16(score + i, exp16_nonpositive(load16(score + i)));
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t off = h * dh;
    const float* ph = score + h * visible;
    float total = 0;
    for (int64_t j = 0; j < visible; ++j) total += ph[j];
    const float inv = 1.0f / total;
    for (int64_t e = 0; e < dh; e += 16) {
      v16f acc{};
      for (int64_t j = 0; j < visible; ++j)
        acc += ph[j] * load16(keys[j] + (j < p ? kv_off_pre : kv_off_own) + off + e);
      store16(o + off + e, acc * inv);
    }
  }
}

}  // namespace

template <typename scalar_t>
void attend_group(const scalar_t* q, const scalar_t* const* keys, int64_t p, int64_t own, int64_t heads, int64_t dh,
                  int64_t kv_off_pre, int64_t kv_off_own, scalar_t* score, scalar_t* o) {
  if (p + own == 1) {  // a window's first token sees only itself: softmax of one score is exactly 1
    const scalar_t* v = keys[0] + kv_off_own;
    std::copy(v, v + heads * dh, o);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (dh % 16 == 0) return attend_group_vec(q, keys, p, own, heads, dh, kv_off_pre, kv_off_own, score, o);
  }
  attend_group_scalar<scalar_t>(q, keys, p, own, heads, dh, kv_off_pre, kv_off_own, score, o);
}

template void attend_group<float>(const float*, const float* const*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, float*, float*);
template void attend_group<double>(const double*, const double* const*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, double*, double*);

void check_prefix(const at::Tensor& pre, const at::Tensor& qkv_like, int64_t m, int64_t width) {
  TORCH_CHECK_VALUE(pre.dim() == 3 && pre.size(2) == width, "prefix_qkv must be (B, P, ", width, "), got ",
                    pre.sizes());
  TORCH_CHECK_VALUE(pre.size(0) >= 1 && m % pre.size(0) == 0, "prefix_qkv's B=", pre.size(0), " must divide M=", m);
  TORCH_CHECK_VALUE(pre.scalar_type() == qkv_like.scalar_type(), "prefix_qkv must have dtype ",
                    qkv_like.scalar_type(), ", got ", pre.scalar_type());
}

namespace {

template <typename scalar_t>
void attend(const scalar_t* qkv, const scalar_t* prefix, int64_t m, int64_t s, int64_t p, int64_t rows_per_prefix,
            int64_t heads, int64_t dh, int64_t nq, scalar_t* out) {
  const int64_t inner = heads * dh, width = 3 * inner;
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    std::vector<const scalar_t*> keys(p + s);
    std::vector<scalar_t> score(heads * (p + s) + 16);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* own = qkv + r * s * width;
      for (int64_t j = 0; j < p; ++j) keys[j] = prefix + ((r / rows_per_prefix) * p + j) * width + inner;
      for (int64_t j = 0; j < s; ++j) keys[p + j] = own + j * width + inner;
      for (int64_t qi = 0; qi < nq; ++qi) {
        const int64_t i = s - nq + qi;
        attend_group<scalar_t>(own + i * width, keys.data(), p, i + 1, heads, dh, inner, inner, score.data(),
                               out + (r * nq + qi) * inner);
      }
    }
  });
}

}  // namespace

at::Tensor window_attention_cpu(const at::Tensor& qkv, const c10::optional<at::Tensor>& prefix_qkv, int64_t heads,
                                int64_t num_queries) {
  TORCH_CHECK_VALUE(qkv.dim() == 3, "qkv must be (M, S, 3*heads*dh), got ", qkv.sizes());
  TORCH_CHECK_VALUE(heads >= 1 && qkv.size(2) % (3 * heads) == 0, "qkv's last dimension ", qkv.size(2),
                    " is not 3*heads*dh for heads=", heads);
  const int64_t m = qkv.size(0), s = qkv.size(1), inner = qkv.size(2) / 3, dh = inner / heads;
  TORCH_CHECK_VALUE(num_queries >= 1 && num_queries <= s, "num_queries must be in [1, S=", s, "], got ", num_queries);
  const auto q = qkv.contiguous();
  at::Tensor pre;
  int64_t p = 0, rows_per_prefix = 1;
  if (prefix_qkv.has_value()) {
    pre = prefix_qkv->contiguous();
    check_prefix(pre, q, m, q.size(2));
    p = pre.size(1);
    rows_per_prefix = m / pre.size(0);
  }
  auto out = at::empty({m, num_queries, inner}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_cpu", [&] {
    attend<scalar_t>(q.data_ptr<scalar_t>(), p ? pre.data_ptr<scalar_t>() : nullptr, m, s, p, rows_per_prefix, heads,
                     dh, num_queries, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace lewm_fast
