// CEM elite selection and refit on CPU: per environment, the topk lowest costs (NaN treated as +inf, ties broken by
// index, like a stable sort), then the elite mean and unbiased std of the candidate action sequences.
//   candidates (B, N, T, A), costs (B, N) -> mean (B, T, A), std (B, T, A), elite_idx (B, k) int64, elite_costs (B, k)
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "ops.h"

namespace lewm_fast {
namespace {

template <typename scalar_t>
void refit_one(const scalar_t* cand, const scalar_t* cost, int64_t n, int64_t k, int64_t width, scalar_t* mean,
               scalar_t* stdev, int64_t* idx_out, scalar_t* cost_out, bool* finite_ok) {
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  std::vector<scalar_t> key(n);
  for (int64_t i = 0; i < n; ++i) key[i] = std::isnan(cost[i]) ? inf : cost[i];
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return key[a] < key[b] || (key[a] == key[b] && a < b);
  });
  bool ok = true;
  for (int64_t j = 0; j < k; ++j) {
    idx_out[j] = order[j];
    cost_out[j] = key[order[j]];
    ok = ok && std::isfinite(key[order[j]]);
  }
  *finite_ok = ok;
  std::fill(mean, mean + width, scalar_t(0));
  std::fill(stdev, stdev + width, scalar_t(0));
  for (int64_t j = 0; j < k; ++j) {
    const scalar_t* row = cand + order[j] * width;
    for (int64_t e = 0; e < width; ++e) mean[e] += row[e];
  }
  for (int64_t e = 0; e < width; ++e) mean[e] /= scalar_t(k);
  for (int64_t j = 0; j < k; ++j) {
    const scalar_t* row = cand + order[j] * width;
    for (int64_t e = 0; e < width; ++e) {
      const scalar_t d = row[e] - mean[e];
      stdev[e] += d * d;
    }
  }
  for (int64_t e = 0; e < width; ++e) stdev[e] = std::sqrt(stdev[e] / scalar_t(k - 1));
}

template <typename scalar_t>
void refit_batch(const scalar_t* cand, const scalar_t* cost, int64_t b, int64_t n, int64_t k, int64_t width,
                 scalar_t* mean, scalar_t* stdev, int64_t* idx, scalar_t* elite_costs, char* ok) {
#pragma omp parallel for schedule(static) if (b > 1)
  for (int64_t i = 0; i < b; ++i) {
    bool fine = true;
    refit_one<scalar_t>(cand + i * n * width, cost + i * n, n, k, width, mean + i * width, stdev + i * width,
                        idx + i * k, elite_costs + i * k, &fine);
    ok[i] = fine;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elite_refit_cpu(const at::Tensor& candidates,
                                                                           const at::Tensor& costs, int64_t topk) {
  TORCH_CHECK_VALUE(candidates.dim() == 4, "candidates must be (B, N, T, A), got ", candidates.sizes());
  TORCH_CHECK_VALUE(costs.dim() == 2, "costs must be (B, N), got ", costs.sizes());
  TORCH_CHECK_VALUE(costs.size(0) == candidates.size(0) && costs.size(1) == candidates.size(1),
                    "costs (B, N) must match candidates' first two dims, got ", costs.sizes(), " vs ",
                    candidates.sizes());
  TORCH_CHECK_VALUE(topk >= 2 && topk <= candidates.size(1), "topk must be in [2, N=", candidates.size(1), "], got ",
                    topk);
  TORCH_CHECK_VALUE(candidates.scalar_type() == costs.scalar_type(), "candidates and costs must share a dtype");
  const auto cand = candidates.contiguous();
  const auto cst = costs.contiguous();
  const int64_t b = cand.size(0), n = cand.size(1), t = cand.size(2), a = cand.size(3), width = t * a;
  auto mean = at::empty({b, t, a}, cand.options());
  auto stdev = at::empty({b, t, a}, cand.options());
  auto idx = at::empty({b, topk}, cand.options().dtype(at::kLong));
  auto elite_costs = at::empty({b, topk}, cst.options());
  std::vector<char> ok(b, 1);
  AT_DISPATCH_FLOATING_TYPES(cand.scalar_type(), "elite_refit_cpu", [&] {
    refit_batch<scalar_t>(cand.data_ptr<scalar_t>(), cst.data_ptr<scalar_t>(), b, n, topk, width,
                          mean.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                          elite_costs.data_ptr<scalar_t>(), ok.data());
  });
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK_VALUE(ok[i], "fewer than topk=", topk, " candidates have a finite cost in environment ", i,
                      ": the model diverged; NaN/inf candidates are never used as elites");
  }
  return {mean, stdev, idx, elite_costs};
}

}  // namespace lewm_fast
