// Backward of window_attention (window_attention.cpp) with respect to qkv, on CPU (float32/float64):
//
// window_attention_backward(grad_out (M, q, heads*dh), qkv (M, S, 3*heads*dh), prefix_qkv (B, P, 3*heads*dh)?, heads)
//   -> d qkv (M, S, 3*heads*dh). The softmax probabilities are recomputed from q and k (a window has at most P+S keys)
//   rather than saved; per query and head: dv_j += p_j dO, dp_j = dO.v_j, ds_j = p_j (dp_j - sum_k p_k dp_k),
//   dq = scale sum_j ds_j k_j, dk_j += scale ds_j q. The shared prefix is a constant: no gradient reaches it. Queries
//   of own tokens 0..S-q-1 (not in the output) get zero. Rows are independent: one thread writes each row's gradient.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "ops.h"
#include "window_attention.h"

namespace lewm_fast {
namespace {

template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void attend_backward_row(const scalar_t* own, const scalar_t* pre, const scalar_t* grad, int64_t s, int64_t p,
                         int64_t heads, int64_t dh, int64_t nq, scalar_t* d_own, scalar_t* prob, scalar_t* dp) {
  const int64_t inner = heads * dh, width = 3 * inner;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(dh));
  // key j of the window (prefix keys first), and its value
  auto key = [&](int64_t j) { return j < p ? pre + j * width + inner : own + (j - p) * width + inner; };
  for (int64_t qi = 0; qi < nq; ++qi) {
    const int64_t i = s - nq + qi, visible = p + i + 1;
    const scalar_t* q = own + i * width;
    const scalar_t* g = grad + qi * inner;
    scalar_t* dq = d_own + i * width;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t off = h * dh;
      const scalar_t total =
          softmax_weights(q + off, [&](int64_t j) { return key(j) + off; }, visible, dh, scale, prob);
      scalar_t dsum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        prob[j] /= total;
        const scalar_t* v = key(j) + inner + off;
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t e = 0; e < dh; ++e) acc += g[off + e] * v[e];
        dp[j] = acc;
        dsum += prob[j] * acc;
      }
      for (int64_t j = 0; j < visible; ++j) {
        const scalar_t ds = prob[j] * (dp[j] - dsum) * scale;
        const scalar_t* k = key(j) + off;
#pragma omp simd
        for (int64_t e = 0; e < dh; ++e) dq[off + e] += ds * k[e];
        if (j < p) continue;  // the prefix is a constant
        scalar_t* dk = d_own + (j - p) * width + inner + off;
        scalar_t* dv = dk + inner;
        const scalar_t pj = prob[j];
#pragma omp simd
        for (int64_t e = 0; e < dh; ++e) {
          dk[e] += ds * q[off + e];
          dv[e] += pj * g[off + e];
        }
      }
    }
  }
}

}  // namespace

at::Tensor window_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv,
                                         const c10::optional<at::Tensor>& prefix_qkv, int64_t heads) {
  TORCH_CHECK_VALUE(qkv.dim() == 3, "qkv must be (M, S, 3*heads*dh), got ", qkv.sizes());
  TORCH_CHECK_VALUE(heads >= 1 && qkv.size(2) % (3 * heads) == 0, "qkv's last dimension ", qkv.size(2),
                    " is not 3*heads*dh for heads=", heads);
  const int64_t m = qkv.size(0), s = qkv.size(1), inner = qkv.size(2) / 3, dh = inner / heads;
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == m && grad_out.size(1) >= 1 && grad_out.size(1) <= s &&
                        grad_out.size(2) == inner,
                    "grad_out must be (M=", m, ", q<=", s, ", ", inner, "), got ", grad_out.sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == qkv.scalar_type(), "grad_out must have dtype ", qkv.scalar_type());
  const int64_t nq = grad_out.size(1);
  const auto q = qkv.contiguous();
  const auto g = grad_out.contiguous();
  at::Tensor pre;
  int64_t p = 0, rows_per_prefix = 1;
  if (prefix_qkv.has_value()) {
    pre = prefix_qkv->contiguous();
    check_prefix(pre, q, m, q.size(2));
    p = pre.size(1);
    rows_per_prefix = m / pre.size(0);
  }
  auto d_qkv = at::zeros_like(q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_backward_cpu", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* pp = p ? pre.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* dp_out = d_qkv.data_ptr<scalar_t>();
    const int64_t width = 3 * inner;
    at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> prob(p + s), dp(p + s);
      for (int64_t r = begin; r < end; ++r) {
        attend_backward_row<scalar_t>(qp + r * s * width, p ? pp + (r / rows_per_prefix) * p * width : nullptr,
                                      gp + r * nq * inner, s, p, heads, dh, nq, dp_out + r * s * width, prob.data(),
                                      dp.data());
      }
    });
  });
  return d_qkv;
}

}  // namespace lewm_fast
