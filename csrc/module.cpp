// Python module lewm_fast._C, and the registration of every C++ op with the dispatcher: the schemas below are the
// ops' whole interface (called as torch.ops.lewm_fast.<op>); their code is csrc/<op>.cpp, declared in ops.h.
#include <torch/extension.h>

#include "blas.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lewm_fast C++ CPU kernels (ops live under torch.ops.lewm_fast)";
  m.def("openmp_max_threads", &openmp_max_threads, "OpenMP threads the CPU kernels use (1 without OpenMP)");
}

TORCH_LIBRARY_FRAGMENT(lewm_fast, m) {
  m.def("elite_refit(Tensor candidates, Tensor costs, int topk) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sigreg_sums(Tensor z, Tensor A, Tensor t) -> Tensor");
  m.def("sigreg_sums_backward(Tensor grad, Tensor z, Tensor A, Tensor t) -> Tensor");
  m.def("sigreg_loss(Tensor sums, Tensor count, Tensor phi, Tensor weights) -> Tensor");
  m.def("sigreg_loss_backward(Tensor grad, Tensor sums, Tensor count, Tensor phi, Tensor weights) -> Tensor");
  m.def("window_attention(Tensor qkv, Tensor? prefix_qkv, int heads, int num_queries) -> Tensor");
  m.def("window_attention_backward(Tensor grad_out, Tensor qkv, Tensor? prefix_qkv, int heads) -> Tensor");
  m.def(
      "window_blocks(Tensor x, Tensor mods, Tensor[] prefix_qkv, Tensor[] weights, float[] eps, int heads, "
      "str gelu_approximate, int chunk_rows, Tensor[] head, float head_eps, str head_approximate, Tensor? goal, "
      "Tensor? packed=None) -> Tensor");
  m.def("window_pack(Tensor[] weights, int heads, Tensor[] head, int rows) -> Tensor");
  // whether window_blocks / window_pack can run: the BLAS gemm / MKL's packed-GEMM API were found in torch's library
  m.def("window_blas_available() -> bool", &lewm_fast::blas_gemm_available);
  m.def("window_packing_available() -> bool", &lewm_fast::mkl_packing_available);
}

TORCH_LIBRARY_IMPL(lewm_fast, CPU, m) {
  m.impl("elite_refit", &lewm_fast::elite_refit_cpu);
  m.impl("sigreg_sums", &lewm_fast::sigreg_sums_cpu);
  m.impl("sigreg_sums_backward", &lewm_fast::sigreg_sums_backward_cpu);
  m.impl("sigreg_loss", &lewm_fast::sigreg_loss_cpu);
  m.impl("sigreg_loss_backward", &lewm_fast::sigreg_loss_backward_cpu);
  m.impl("window_attention", &lewm_fast::window_attention_cpu);
  m.impl("window_attention_backward", &lewm_fast::window_attention_backward_cpu);
  m.impl("window_blocks", &lewm_fast::window_blocks_cpu);
  m.impl("window_pack", &lewm_fast::window_pack_cpu);
}
