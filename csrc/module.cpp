// Python module lewm_fast._C. The ops themselves register with the dispatcher (TORCH_LIBRARY_FRAGMENT in each
// csrc/<op>.cpp) and are called as torch.ops.lewm_fast.<op>; this file only exposes build information.
#include <torch/extension.h>

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
