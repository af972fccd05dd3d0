// The GEMMs of the CPU window ops: the BLAS gemm torch's CPU library exports (sgemm_/dgemm_) and MKL's packed-GEMM
// API, both looked up at run time (no link-time BLAS dependency), and the nn.Linear-layout wrappers over them.
#pragma once

#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lewm_fast {

// out (r, n; row stride ldo) = beta * out + in (r, k; row stride ldi) @ w^T, w (n, k; row stride ldw): an nn.Linear
// weight or a block of one. Calls the BLAS gemm that torch's own CPU matmul uses (sgemm_/dgemm_, looked up at run
// time), so the many small GEMMs of a chunk skip ATen's per-call tensor bookkeeping. window_blocks refuses to run
// where torch exports no such symbol (blas_gemm_available() is false; the engine then runs op by op).
template <typename scalar_t>
using BlasGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const scalar_t*,
                          const scalar_t*, const int*, const scalar_t*, const int*, const scalar_t*, scalar_t*,
                          const int*);

inline void* find_symbol(const char* name) {
  void* sym = dlsym(RTLD_DEFAULT, name);
  if (sym == nullptr) {
    if (void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) sym = dlsym(lib, name);
  }
  return sym;
}

template <typename scalar_t>
BlasGemm<scalar_t> blas_gemm() {
  static const auto fn =
      reinterpret_cast<BlasGemm<scalar_t>>(find_symbol(std::is_same_v<scalar_t, float> ? "sgemm_" : "dgemm_"));
  return fn;
}

// Whether torch exports the BLAS gemm window_blocks calls (the rollout engine checks before choosing this path).
inline bool blas_gemm_available() { return blas_gemm<float>() != nullptr && blas_gemm<double>() != nullptr; }

// MKL's packed-GEMM API (float32 only; the Fortran symbols torch's MKL builds export). A GEMM packs both operands
// into its kernel's panel layout on every call; window_blocks' GEMMs are small (K = 192...512), so that repacking is
// about a tenth of a rollout step. With it, every weight block is packed once per weight set (window_pack) and each
// activation that feeds several GEMMs once per chunk. MKL wants both operands of a GEMM packed with the same thread
// count: all packing and computing runs with MKL single-threaded (window_blocks' threads are its own).
using PackGetSize = size_t (*)(const char*, const int*, const int*, const int*);
using PackFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                        const int*, float*);
using ComputeFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                           const float*, const int*, const float*, float*, const int*);
using SetThreadsLocal = int (*)(int);

struct PackApi {
  PackGetSize get_size;
  PackFn pack;
  ComputeFn compute;
  SetThreadsLocal threads_local;
};

inline const PackApi& pack_api() {
  static const PackApi api{reinterpret_cast<PackGetSize>(find_symbol("sgemm_pack_get_size")),
                           reinterpret_cast<PackFn>(find_symbol("sgemm_pack")),
                           reinterpret_cast<ComputeFn>(find_symbol("sgemm_compute")),
                           reinterpret_cast<SetThreadsLocal>(find_symbol("MKL_Set_Num_Threads_Local"))};
  return api;
}

// Whether window_pack can run (torch's MKL builds); without it window_blocks runs on the plain gemm.
inline bool mkl_packing_available() {
  const PackApi& api = pack_api();
  return api.get_size && api.pack && api.compute && api.threads_local;
}

// MKL single-threaded in this thread while alive (restores the thread's previous setting).
class MklSingleThread {
 public:
  MklSingleThread() : active_(mkl_packing_available()), previous_(active_ ? pack_api().threads_local(1) : 0) {}
  ~MklSingleThread() {
    if (active_) pack_api().threads_local(previous_);
  }
  MklSingleThread(const MklSingleThread&) = delete;
  MklSingleThread& operator=(const MklSingleThread&) = delete;

 private:
  bool active_;
  int previous_;
};

// Bytes of one packed operand: 'A' a weight block (n, k) for GEMMs of about `rows` rows; 'B' `rows` activation rows
// of width k for weight blocks of n rows. Rounded up to 64 so packed operands laid end to end stay aligned.
inline int64_t packed_bytes(const char* which, int64_t n, int64_t rows, int64_t k) {
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
  return (static_cast<int64_t>(pack_api().get_size(which, &m_, &n_, &k_)) + 63) / 64 * 64;
}

inline void pack_weight(const float* w, int64_t n, int64_t k, int64_t ldw, int64_t rows, float* dest) {
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k), ld = static_cast<int>(ldw);
  const float one = 1;
  pack_api().pack("A", "T", &m_, &n_, &k_, &one, w, &ld, dest);
}

// Packs rows (r, k; row stride ldi) as the activation operand of GEMMs against weight blocks of n rows.
template <typename scalar_t>
void pack_rows(int64_t r, int64_t k, const scalar_t* in, int64_t ldi, int64_t n, scalar_t* dest) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (r == 0) return;
    const int m_ = static_cast<int>(n), n_ = static_cast<int>(r), k_ = static_cast<int>(k), ld = static_cast<int>(ldi);
    const float one = 1;
    pack_api().pack("B", "N", &m_, &n_, &k_, &one, in, &ld, dest);
  }
}

// out (r, n; row stride ldo) = beta * out + in (r, k) @ w^T for w (n, k) with row stride ldw. w_packed: w's block
// packed by window_pack (float32), else null; in_packed: these very rows packed by pack_rows, else null (then `in`
// with row stride ldi is read).
template <typename scalar_t>
void linear_into(int64_t r, int64_t n, int64_t k, const scalar_t* in, int64_t ldi, const scalar_t* w, int64_t ldw,
                 scalar_t beta, scalar_t* out, int64_t ldo, const scalar_t* w_packed = nullptr,
                 const scalar_t* in_packed = nullptr) {
  if (r == 0 || n == 0) return;
  // column-major: out^T (n, r) = (w^T)^T (n, k) @ in^T (k, r)
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(r), k_ = static_cast<int>(k);
  const int lda = static_cast<int>(ldw), ldb = static_cast<int>(ldi), ldc = static_cast<int>(ldo);
  const scalar_t one = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (w_packed != nullptr) {
      pack_api().compute("P", in_packed ? "P" : "N", &m_, &n_, &k_, w_packed, &lda, in_packed ? in_packed : in, &ldb,
                         &beta, out, &ldc);
      return;
    }
  }
  blas_gemm<scalar_t>()("T", "N", &m_, &n_, &k_, &one, w, &lda, in, &ldb, &beta, out, &ldc);
}

}  // namespace lewm_fast
