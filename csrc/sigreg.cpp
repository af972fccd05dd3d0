// SIGReg on CPU, fused like the Triton kernels: tile by tile, x = z @ A (vectorised FMAs against A packed in chunks of
// 16 projections), cos/sin at the K knots and the reduction over the batch, so neither the (T, B, M, K) tensor of the
// eager version nor x itself is ever stored.
//   sigreg_sums(z (T,B,D), A (D,M), t (K)) -> (2, T, M, K): [sum_b cos(t_k x_tbm), sum_b sin(t_k x_tbm)]
//   sigreg_sums_backward(grad (2,T,M,K), z, A, t) -> dz (T,B,D): the vector-Jacobian product of sigreg_sums,
//     G[t,b,m] = sum_k t_k (grad_S[t,m,k] cos(t_k x) - grad_C[t,m,k] sin(t_k x)),  dz[t] = G[t] @ A^T,
//     with x recomputed and G consumed tile by tile.
//   sigreg_loss(sums, count, phi (K), weights (K)) -> mean over (t, m) of count * sum_k w_k [(c_k - phi_k)^2 + s_k^2]
//     with (c, s) = sums / count, and sigreg_loss_backward(grad, sums, count, phi, weights) -> d loss / d sums: the
//     error formula as one serial loop (a few hundred KiB; as separate PyTorch ops it is ~20 small parallel regions).
// float32 is computed in float32 with a branch-free sin/cos that vectorises across 16 projections (AVX-512 / AVX2 /
// baseline clones picked at load time); float64 uses std::sin/std::cos; reduced-precision inputs are upcast to float32.
// Equispaced knots from 0 (the default) need one sin/cos per sample, the other knots follow by angle addition.
// One OpenMP region per pass: the forward runs over (frame, 16 projections), the backward over (frame, 32 batch rows).
// A region runs on one thread while the machine is oversubscribed (region_threads): libgomp's default wait policy
// spins at the region's end, and with other processes competing for the cores 2 threads were slower than 1.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define LEWM_FAST_LOADAVG 1
#endif

#include "ops.h"

namespace lewm_fast {
namespace {

constexpr int64_t kLanes = 16;      // projections per chunk: one AVX-512 vector of float32
constexpr int64_t kRowTile = 64;    // batch rows per tile
constexpr int64_t kRowBlock = 8;    // batch rows projected together (register blocking)
constexpr int64_t kScatterRows = 4;  // batch rows x kColBlock columns of dz accumulated together (register blocking)
constexpr int64_t kColBlock = 64;
constexpr int64_t kGradRows = 32;   // batch rows per backward task
constexpr int64_t kParallelWork = 1 << 18;  // knot evaluations below which a parallel region costs more than it saves

// sin and cos of a float32 argument without branches, so that loops over it vectorise. a = j*pi + r with |r| <= pi/2
// (Cody-Waite reduction with pi split in three, exact products for |j| < 2^16), Taylor polynomials in r (truncation
// error < 6e-8 on [-pi/2, pi/2]), then the sign (-1)^j. Accurate to a few ulp for |a| < 1e5 (fp32 arguments beyond
// that carry more rounding error in t_k * x itself than this adds).
inline void sincos_f32(float a, float* s, float* c) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (v + kRound) - kRound rounds v to the nearest integer
  constexpr float kInvPi = 0.318309886183790671f;
  constexpr float kPiA = 3.140625f, kPiB = 9.67502593994140625e-4f, kPiC = 1.509957990978376432e-7f;
  const float j = (a * kInvPi + kRound) - kRound;
  const float r = ((a - j * kPiA) - j * kPiB) - j * kPiC;
  const float r2 = r * r;
  const float sp =
      r + r * r2 *
              (-1.66666667e-1f +
               r2 * (8.33333333e-3f + r2 * (-1.98412698e-4f + r2 * (2.75573192e-6f + r2 * -2.50521084e-8f))));
  const float cp =
      1.0f + r2 * (-0.5f + r2 * (4.16666667e-2f +
                                 r2 * (-1.38888889e-3f +
                                       r2 * (2.48015873e-5f + r2 * (-2.75573192e-7f + r2 * 2.08767570e-9f)))));
  const float half = j * 0.5f;
  const float sign = 1.0f - 4.0f * std::fabs(half - ((half + kRound) - kRound));  // +1 for even j, -1 for odd j
  *s = sign * sp;
  *c = sign * cp;
}

inline void sincos_f64(double a, double* s, double* c) {
  *s = std::sin(a);
  *c = std::cos(a);
}

// The knots; with t_k = k * dt (sigreg_knots makes them so) cos/sin(t_k x) come from rotating (cos, sin)(dt x) k
// times: one polynomial sin/cos per sample instead of one per knot, and 4 multiplies per knot.
template <typename scalar_t>
struct Knots {
  const scalar_t* t;
  int64_t K;
  bool rotate;
  scalar_t dt;
};

template <typename scalar_t>
Knots<scalar_t> make_knots(const scalar_t* t, int64_t K) {
  Knots<scalar_t> knots{t, K, K >= 2 && t[0] == scalar_t(0), K >= 2 ? t[1] : scalar_t(0)};
  const scalar_t tol = 8 * std::numeric_limits<scalar_t>::epsilon();
  for (int64_t k = 1; k < K && knots.rotate; ++k) {
    knots.rotate = std::abs(t[k] - scalar_t(k) * knots.dt) <= tol * std::abs(t[k]);
  }
  return knots;
}

// Scratch of one tile: the values x, cos/sin at the current knot, and (rotating) cos/sin(dt x).
template <typename scalar_t>
struct Tile {
  scalar_t x[kRowTile * kLanes], c[kRowTile * kLanes], s[kRowTile * kLanes];
  scalar_t c1[kRowTile * kLanes], s1[kRowTile * kLanes];
};

// Fill tile.c/s[0:n] with cos/sin(t_k x) for knot k; when rotating, k must run 0, 1, 2, ... over the same x.
template <typename scalar_t, void (*SinCos)(scalar_t, scalar_t*, scalar_t*)>
__attribute__((always_inline)) inline void knot_values(const Knots<scalar_t>& knots, int64_t k, int64_t n,
                                                       Tile<scalar_t>& tile) {
  scalar_t* __restrict__ c = tile.c;
  scalar_t* __restrict__ s = tile.s;
  const scalar_t* __restrict__ x = tile.x;
  if (!knots.rotate) {
    const scalar_t tk = knots.t[k];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) SinCos(tk * x[i], &s[i], &c[i]);
    return;
  }
  scalar_t* __restrict__ c1 = tile.c1;
  scalar_t* __restrict__ s1 = tile.s1;
  if (k == 0) {
    const scalar_t dt = knots.dt;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      SinCos(dt * x[i], &s1[i], &c1[i]);
      c[i] = scalar_t(1);
      s[i] = scalar_t(0);
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t ci = c[i] * c1[i] - s[i] * s1[i];
    s[i] = s[i] * c1[i] + c[i] * s1[i];
    c[i] = ci;
  }
}

// The inputs every task reads: z (row stride sz_b, frame stride sz_t, unit column stride), A packed by chunks of
// kLanes projections (chunks, D, kLanes), zero-padded in the last chunk, and the knots.
template <typename scalar_t>
struct Problem {
  const scalar_t* z;
  int64_t sz_t, sz_b;
  int64_t T, B, D, M, chunks;
  const scalar_t* packed;
  Knots<scalar_t> knots;
};

// x (nb x kLanes) = nb rows of z (row stride sz_b) @ one packed chunk of A (D x kLanes).
template <typename scalar_t>
__attribute__((always_inline)) inline void project_rows(const scalar_t* z, int64_t sz_b, int64_t nb, int64_t D,
                                                        const scalar_t* chunk, scalar_t* x) {
  int64_t i = 0;
  for (; i + kRowBlock <= nb; i += kRowBlock) {
    scalar_t acc[kRowBlock][kLanes] = {};
    for (int64_t d = 0; d < D; ++d) {
      const scalar_t* ad = chunk + d * kLanes;
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const scalar_t zr = z[(i + r) * sz_b + d];
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[r][l] += zr * ad[l];
      }
    }
    for (int64_t r = 0; r < kRowBlock; ++r) std::copy(acc[r], acc[r] + kLanes, x + (i + r) * kLanes);
  }
  for (; i < nb; ++i) {
    scalar_t acc[kLanes] = {};
    for (int64_t d = 0; d < D; ++d) {
      const scalar_t zr = z[i * sz_b + d];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += zr * chunk[d * kLanes + l];
    }
    std::copy(acc, acc + kLanes, x + i * kLanes);
  }
}

// acc (nb x D) += g (nb x kLanes, the first `lanes` columns) @ rows (lanes x D), in register blocks of kScatterRows
// rows x kColBlock columns.
template <typename scalar_t>
__attribute__((always_inline)) inline void scatter_rows(const scalar_t* g, int64_t nb, int64_t lanes,
                                                        const scalar_t* rows, int64_t D, scalar_t* acc) {
  int64_t i = 0;
  for (; i + kScatterRows <= nb; i += kScatterRows) {
    int64_t d0 = 0;
    for (; d0 + kColBlock <= D; d0 += kColBlock) {
      scalar_t r[kScatterRows][kColBlock];
      for (int64_t q = 0; q < kScatterRows; ++q) std::copy_n(acc + (i + q) * D + d0, kColBlock, r[q]);
      for (int64_t l = 0; l < lanes; ++l) {
        const scalar_t* a = rows + l * D + d0;
        for (int64_t q = 0; q < kScatterRows; ++q) {
          const scalar_t gq = g[(i + q) * kLanes + l];
#pragma omp simd
          for (int64_t d = 0; d < kColBlock; ++d) r[q][d] += gq * a[d];
        }
      }
      for (int64_t q = 0; q < kScatterRows; ++q) std::copy_n(r[q], kColBlock, acc + (i + q) * D + d0);
    }
    for (int64_t q = i; q < i + kScatterRows; ++q) {
      for (int64_t l = 0; l < lanes; ++l) {
        for (int64_t d = d0; d < D; ++d) acc[q * D + d] += g[q * kLanes + l] * rows[l * D + d];
      }
    }
  }
  for (; i < nb; ++i) {
    for (int64_t l = 0; l < lanes; ++l) {
      const scalar_t gl = g[i * kLanes + l];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) acc[i * D + d] += gl * rows[l * D + d];
    }
  }
}

// Forward task: sums over all B rows of cos/sin(t_k x) for frame ti and projection chunk `chunk` into out (2,T,M,K).
template <typename scalar_t, void (*SinCos)(scalar_t, scalar_t*, scalar_t*)>
__attribute__((always_inline)) inline void sums_task(const Problem<scalar_t>& p, int64_t ti, int64_t chunk,
                                                     scalar_t* out) {
  const int64_t K = p.knots.K, m0 = chunk * kLanes, lanes = std::min(kLanes, p.M - m0);
  auto tile = std::make_unique<Tile<scalar_t>>();
  std::vector<scalar_t> acc(2 * K * kLanes, scalar_t(0));  // [cos | sin][k][lane]
  for (int64_t b0 = 0; b0 < p.B; b0 += kRowTile) {
    const int64_t nb = std::min(kRowTile, p.B - b0);
    project_rows(p.z + ti * p.sz_t + b0 * p.sz_b, p.sz_b, nb, p.D, p.packed + chunk * p.D * kLanes, tile->x);
    for (int64_t k = 0; k < K; ++k) {
      knot_values<scalar_t, SinCos>(p.knots, k, nb * kLanes, *tile);
      scalar_t cs[kLanes] = {}, sn[kLanes] = {};
      for (int64_t i = 0; i < nb; ++i) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          cs[l] += tile->c[i * kLanes + l];
          sn[l] += tile->s[i * kLanes + l];
        }
      }
      for (int64_t l = 0; l < kLanes; ++l) {
        acc[k * kLanes + l] += cs[l];
        acc[(K + k) * kLanes + l] += sn[l];
      }
    }
  }
  scalar_t* out_c = out + (ti * p.M + m0) * K;
  scalar_t* out_s = out_c + p.T * p.M * K;
  for (int64_t l = 0; l < lanes; ++l) {
    for (int64_t k = 0; k < K; ++k) {
      out_c[l * K + k] = acc[k * kLanes + l];
      out_s[l * K + k] = acc[(K + k) * kLanes + l];
    }
  }
}

// Backward task: dz[ti, b0:b0+nb] = sum over all chunks of G (nb x kLanes) @ A^T rows of the chunk. coef holds, per
// (frame, chunk), [t_k grad_S | -t_k grad_C][k][lane]; at is A^T (M, D); dz is (T, B, D) contiguous.
template <typename scalar_t, void (*SinCos)(scalar_t, scalar_t*, scalar_t*)>
__attribute__((always_inline)) inline void grad_task(const Problem<scalar_t>& p, int64_t ti, int64_t b0, int64_t nb,
                                                     const scalar_t* coef, const scalar_t* at, scalar_t* dz) {
  const int64_t K = p.knots.K, D = p.D;
  auto tile = std::make_unique<Tile<scalar_t>>();
  std::vector<scalar_t> g(nb * kLanes), acc(nb * D, scalar_t(0));
  const scalar_t* z = p.z + ti * p.sz_t + b0 * p.sz_b;
  for (int64_t chunk = 0; chunk < p.chunks; ++chunk) {
    const int64_t m0 = chunk * kLanes, lanes = std::min(kLanes, p.M - m0);
    project_rows(z, p.sz_b, nb, D, p.packed + chunk * D * kLanes, tile->x);
    std::fill(g.begin(), g.end(), scalar_t(0));
    const scalar_t* u = coef + (ti * p.chunks + chunk) * 2 * K * kLanes;
    const scalar_t* v = u + K * kLanes;
    for (int64_t k = 0; k < K; ++k) {
      knot_values<scalar_t, SinCos>(p.knots, k, nb * kLanes, *tile);
      for (int64_t i = 0; i < nb; ++i) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t e = i * kLanes + l;
          g[e] += u[k * kLanes + l] * tile->c[e] + v[k * kLanes + l] * tile->s[e];
        }
      }
    }
    scatter_rows(g.data(), nb, lanes, at + m0 * D, D, acc.data());
  }
  std::copy(acc.begin(), acc.end(), dz + (ti * p.B + b0) * D);
}

// Vectorised float32 clones: the loader picks the best one the CPU supports.
__attribute__((target_clones("avx512f", "avx2", "default"))) void sums_task_f32(const Problem<float>& p, int64_t ti,
                                                                                  int64_t chunk, float* out) {
  sums_task<float, sincos_f32>(p, ti, chunk, out);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void grad_task_f32(const Problem<float>& p, int64_t ti,
                                                                                  int64_t b0, int64_t nb,
                                                                                  const float* coef, const float* at,
                                                                                  float* dz) {
  grad_task<float, sincos_f32>(p, ti, b0, nb, coef, at, dz);
}

void sums_task_any(const Problem<float>& p, int64_t ti, int64_t chunk, float* out) { sums_task_f32(p, ti, chunk, out); }
void sums_task_any(const Problem<double>& p, int64_t ti, int64_t chunk, double* out) {
  sums_task<double, sincos_f64>(p, ti, chunk, out);
}
void grad_task_any(const Problem<float>& p, int64_t ti, int64_t b0, int64_t nb, const float* coef, const float* at,
                   float* dz) {
  grad_task_f32(p, ti, b0, nb, coef, at, dz);
}
void grad_task_any(const Problem<double>& p, int64_t ti, int64_t b0, int64_t nb, const double* coef, const double* at,
                   double* dz) {
  grad_task<double, sincos_f64>(p, ti, b0, nb, coef, at, dz);
}

// Threads for a parallel region of `work` knot evaluations: 1 below kParallelWork, or while the machine is
// oversubscribed (1-minute load average >= online CPUs + the threads this region would use: at least as many other
// runnable threads as ours beside a fully busy machine); else OpenMP's (torch.get_num_threads()). Under such load,
// libgomp's default (spinning) wait at a region's end costs more than the second thread gains: at the LeWM shape on
// a 2-core VM at load 13-18, fwd+bwd took 76-304 ms (medians of runs) on 2 threads, 43-93 ms on 1 (docs/benchmarks.md).
int region_threads(int64_t work) {
#ifdef _OPENMP
  const int wanted = omp_get_max_threads();
#else
  const int wanted = 1;
#endif
  if (work < kParallelWork || wanted <= 1) return 1;
#ifdef LEWM_FAST_LOADAVG
  double load = 0.0;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus >= 1 && getloadavg(&load, 1) == 1 && load >= static_cast<double>(cpus + wanted)) return 1;
#endif
  return wanted;
}

template <typename scalar_t>
void sums_all(const Problem<scalar_t>& p, scalar_t* out) {
  const int threads = region_threads(p.T * p.M * p.B * p.knots.K);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t task = 0; task < p.T * p.chunks; ++task) sums_task_any(p, task / p.chunks, task % p.chunks, out);
}

template <typename scalar_t>
void grad_all(const Problem<scalar_t>& p, const scalar_t* coef, const scalar_t* at, scalar_t* dz) {
  const int64_t blocks = (p.B + kGradRows - 1) / kGradRows;
  const int threads = region_threads(p.T * p.M * p.B * p.knots.K);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t task = 0; task < p.T * blocks; ++task) {
    const int64_t b0 = (task % blocks) * kGradRows;
    grad_task_any(p, task / blocks, b0, std::min(kGradRows, p.B - b0), coef, at, dz);
  }
}

at::ScalarType compute_dtype(const at::Tensor& z, const at::Tensor& A) {
  return z.scalar_type() == at::kDouble || A.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& z, const at::Tensor& A, const at::Tensor& t) {
  TORCH_CHECK_VALUE(z.dim() == 3, "z must be (T, B, D), got ", z.sizes());
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == z.size(2), "A must be (D, M) with D=", z.size(2), ", got ",
                    A.sizes());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) >= 1, "t must be (K,) with K >= 1, got ", t.sizes());
  TORCH_CHECK_VALUE(z.size(1) >= 1 && z.size(2) >= 1 && A.size(1) >= 1, "z and A must not be empty, got ", z.sizes(),
                    " and ", A.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()) && at::isFloatingType(A.scalar_type()) &&
                       at::isFloatingType(t.scalar_type()),
                   "z, A and t must be floating point");
}

// A (D, M), any strides -> packed (chunks, D, kLanes), zero-padded past M, and optionally A^T (M, D). Serial loops:
// these are small, and a parallel region per copy would cost more than it saves.
template <typename scalar_t>
void pack_projection(const at::Tensor& A, scalar_t* packed, scalar_t* transposed) {
  const auto a = A.accessor<scalar_t, 2>();
  const int64_t D = A.size(0), M = A.size(1), chunks = (M + kLanes - 1) / kLanes;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t m = chunk * kLanes + l;
        packed[(chunk * D + d) * kLanes + l] = m < M ? a[d][m] : scalar_t(0);
      }
    }
  }
  if (transposed != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t d = 0; d < D; ++d) transposed[m * D + d] = a[d][m];
    }
  }
}

// grad (2, T, M, K) -> coef (T, chunks, 2, K, kLanes) = [t_k grad_S | -t_k grad_C], zero past M.
template <typename scalar_t>
void gradient_coefficients(const at::Tensor& grad, const scalar_t* t, int64_t chunks, scalar_t* coef) {
  const auto g = grad.accessor<scalar_t, 4>();
  const int64_t T = grad.size(1), M = grad.size(2), K = grad.size(3);
  for (int64_t ti = 0; ti < T; ++ti) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      scalar_t* u = coef + (ti * chunks + chunk) * 2 * K * kLanes;
      scalar_t* v = u + K * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t m = chunk * kLanes + l;
          u[k * kLanes + l] = m < M ? t[k] * g[1][ti][m][k] : scalar_t(0);
          v[k * kLanes + l] = m < M ? -t[k] * g[0][ti][m][k] : scalar_t(0);
        }
      }
    }
  }
}

// z in the compute dtype with unit column stride (its other strides are kept: no copy for emb.transpose(0, 1)).
at::Tensor compute_view(const at::Tensor& z, at::ScalarType dtype) {
  auto zc = z.to(dtype);
  return zc.stride(2) == 1 ? zc : zc.contiguous();
}

template <typename scalar_t>
Problem<scalar_t> problem(const at::Tensor& z, int64_t M, const scalar_t* packed, const at::Tensor& t) {
  return {z.const_data_ptr<scalar_t>(), z.stride(0), z.stride(1), z.size(0), z.size(1), z.size(2), M,
          (M + kLanes - 1) / kLanes, packed, make_knots(t.const_data_ptr<scalar_t>(), t.size(0))};
}

}  // namespace

at::Tensor sigreg_sums_cpu(const at::Tensor& z, const at::Tensor& A, const at::Tensor& t) {
  check_inputs(z, A, t);
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // stay in the compute dtype
  const auto dtype = compute_dtype(z, A);
  const auto zc = compute_view(z, dtype), ac = A.to(dtype), tc = t.to(dtype).contiguous();
  const int64_t T = z.size(0), D = z.size(2), M = A.size(1), K = t.size(0), chunks = (M + kLanes - 1) / kLanes;
  auto packed = at::empty({chunks, D, kLanes}, zc.options());
  auto out = at::empty({2, T, M, K}, zc.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "sigreg_sums_cpu", [&] {
    pack_projection<scalar_t>(ac, packed.mutable_data_ptr<scalar_t>(), nullptr);
    sums_all<scalar_t>(problem<scalar_t>(zc, M, packed.const_data_ptr<scalar_t>(), tc),
                       out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor sigreg_sums_backward_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& A,
                                    const at::Tensor& t) {
  check_inputs(z, A, t);
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t T = z.size(0), B = z.size(1), D = z.size(2), M = A.size(1), K = t.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == 2 && grad.size(1) == T && grad.size(2) == M &&
                        grad.size(3) == K,
                    "grad must be (2, T, M, K) = (2, ", T, ", ", M, ", ", K, "), got ", grad.sizes());
  const auto dtype = compute_dtype(z, A);
  const auto zc = compute_view(z, dtype), ac = A.to(dtype), tc = t.to(dtype).contiguous(), gc = grad.to(dtype);
  const int64_t chunks = (M + kLanes - 1) / kLanes;
  auto packed = at::empty({chunks, D, kLanes}, zc.options());
  auto transposed = at::empty({M, D}, zc.options());
  auto coef = at::empty({T, chunks, 2, K, kLanes}, zc.options());
  auto dz = at::empty({T, B, D}, zc.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "sigreg_sums_backward_cpu", [&] {
    pack_projection<scalar_t>(ac, packed.mutable_data_ptr<scalar_t>(), transposed.mutable_data_ptr<scalar_t>());
    gradient_coefficients<scalar_t>(gc, tc.const_data_ptr<scalar_t>(), chunks, coef.mutable_data_ptr<scalar_t>());
    grad_all<scalar_t>(problem<scalar_t>(zc, M, packed.const_data_ptr<scalar_t>(), tc),
                       coef.const_data_ptr<scalar_t>(), transposed.const_data_ptr<scalar_t>(),
                       dz.mutable_data_ptr<scalar_t>());
  });
  return dz.to(z.scalar_type());
}

namespace {

void check_loss_inputs(const at::Tensor& sums, const at::Tensor& count, const at::Tensor& phi,
                       const at::Tensor& weights) {
  TORCH_CHECK_VALUE(sums.dim() == 4 && sums.size(0) == 2, "sums must be (2, T, M, K), got ", sums.sizes());
  TORCH_CHECK_VALUE(count.numel() == 1, "count must hold one number, got ", count.sizes());
  TORCH_CHECK_VALUE(phi.dim() == 1 && weights.dim() == 1 && phi.size(0) == sums.size(3) &&
                        weights.size(0) == sums.size(3),
                    "phi and weights must be (K,) with K=", sums.size(3), ", got ", phi.sizes(), " and ",
                    weights.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(sums.scalar_type()), "sums must be floating point");
}

template <typename scalar_t>
scalar_t loss_value(const scalar_t* sums, int64_t TM, int64_t K, double n, const scalar_t* phi, const scalar_t* w) {
  const scalar_t* cs = sums;
  const scalar_t* sn = sums + TM * K;
  double total = 0;
  for (int64_t i = 0; i < TM * K; ++i) {
    const int64_t k = i % K;
    const double c = cs[i] / n - phi[k], s = sn[i] / n;
    total += w[k] * (c * c + s * s);
  }
  return static_cast<scalar_t>(total * n / static_cast<double>(TM));
}

template <typename scalar_t>
void loss_gradient(const scalar_t* sums, int64_t TM, int64_t K, double n, const scalar_t* phi, const scalar_t* w,
                   double g, scalar_t* out) {
  const double scale = 2.0 * g / static_cast<double>(TM);  // d/dC of n (C/n - phi)^2 = 2 (C/n - phi)
  for (int64_t i = 0; i < TM * K; ++i) {
    const int64_t k = i % K;
    out[i] = static_cast<scalar_t>(scale * w[k] * (sums[i] / n - phi[k]));
    out[TM * K + i] = static_cast<scalar_t>(scale * w[k] * (sums[TM * K + i] / n));
  }
}

}  // namespace

at::Tensor sigreg_loss_cpu(const at::Tensor& sums, const at::Tensor& count, const at::Tensor& phi,
                           const at::Tensor& weights) {
  check_loss_inputs(sums, count, phi, weights);
  const auto sc = sums.contiguous(), pc = phi.to(sums.scalar_type()).contiguous();
  const auto wc = weights.to(sums.scalar_type()).contiguous();
  const int64_t TM = sums.size(1) * sums.size(2), K = sums.size(3);
  auto out = at::empty({}, sums.options());
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "sigreg_loss_cpu", [&] {
    out.fill_(loss_value<scalar_t>(sc.const_data_ptr<scalar_t>(), TM, K, count.item<double>(),
                                   pc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>()));
  });
  return out;
}

at::Tensor sigreg_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& sums, const at::Tensor& count,
                                    const at::Tensor& phi, const at::Tensor& weights) {
  check_loss_inputs(sums, count, phi, weights);
  const auto sc = sums.contiguous(), pc = phi.to(sums.scalar_type()).contiguous();
  const auto wc = weights.to(sums.scalar_type()).contiguous();
  const int64_t TM = sums.size(1) * sums.size(2), K = sums.size(3);
  auto out = at::empty_like(sc);
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "sigreg_loss_backward_cpu", [&] {
    loss_gradient<scalar_t>(sc.const_data_ptr<scalar_t>(), TM, K, count.item<double>(), pc.const_data_ptr<scalar_t>(),
                            wc.const_data_ptr<scalar_t>(), grad.item<double>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace lewm_fast
