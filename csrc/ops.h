// The C++ ops' entry points, one csrc/<op>.cpp each (shapes and semantics at the top of each file), registered with
// the dispatcher in module.cpp and called as torch.ops.lewm_fast.<op> on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace lewm_fast {

// elite_refit.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elite_refit_cpu(const at::Tensor& candidates,
                                                                           const at::Tensor& costs, int64_t topk);

// sigreg.cpp
at::Tensor sigreg_sums_cpu(const at::Tensor& z, const at::Tensor& A, const at::Tensor& t);
at::Tensor sigreg_sums_backward_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& A,
                                    const at::Tensor& t);
at::Tensor sigreg_loss_cpu(const at::Tensor& sums, const at::Tensor& count, const at::Tensor& phi,
                           const at::Tensor& weights);
at::Tensor sigreg_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& sums, const at::Tensor& count,
                                    const at::Tensor& phi, const at::Tensor& weights);

// window_attention.cpp
at::Tensor window_attention_cpu(const at::Tensor& qkv, const c10::optional<at::Tensor>& prefix_qkv, int64_t heads,
                                int64_t num_queries);

// window_attention_backward.cpp
at::Tensor window_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv,
                                         const c10::optional<at::Tensor>& prefix_qkv, int64_t heads);

// window_blocks.cpp (whether they can run: blas.h's blas_gemm_available / mkl_packing_available)
at::Tensor window_blocks_cpu(const at::Tensor& x_in, const at::Tensor& mods, at::TensorList prefix_qkv,
                             at::TensorList weights, at::ArrayRef<double> eps, int64_t heads,
                             c10::string_view gelu_approximate, int64_t chunk_rows, at::TensorList head_weights,
                             double head_eps, c10::string_view head_approximate, const c10::optional<at::Tensor>& goal,
                             const c10::optional<at::Tensor>& packed);
at::Tensor window_pack_cpu(at::TensorList weights, int64_t heads, at::TensorList head_weights, int64_t rows);

}  // namespace lewm_fast
