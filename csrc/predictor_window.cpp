// LeWM predictor over a short window of tokens on CPU (float32/float64):
//
// window_attention(qkv (M, S, 3*heads*dh), prefix_qkv (B, P, 3*heads*dh)?, heads, num_queries) -> (M, q, heads*dh)
//   Causal multi-head attention read straight from the to_qkv output layout [q | k | v] (heads-major inside each),
//   with an optional prefix of window tokens shared by each group of M / B consecutive rows (the part of a CEM
//   window that is the same for every candidate). Own token i sits at window position P+i and sees positions <= P+i;
//   the output holds own tokens S-q..S-1.
//
// window_blocks(x (M, S, D), mods (M, S, depth, 6, D) strided, prefix_qkv[depth] or [], weights[9*depth],
//               eps[4*depth], heads, gelu_approximate, chunk_rows, head[4] or [], head_eps, head_approximate,
//               goal (B, D')?) -> (M, D) without a head; (M, D') with one; (M,) with a head and a goal
//   All AdaLN-zero blocks of the predictor for a rollout step, returning the residual stream of the last token (the
//   only one read out) or, given the folded prediction head {w1 (F, D), b1, w2 (D', F), b2}, the next latent
//   w2 @ act(w1 @ LN(x_last) + b1) + b2 (LN without affine, eps head_eps), or its squared distance to the goal of its
//   environment (rows are grouped by environment: M / B consecutive rows per goal).
//   Per block: LN(norm1) * (1+scale1) + shift1 -> LN (attn.norm, affine folded into to_qkv) -> to_qkv -> window
//   attention -> x += gate1 * to_out(.) ; LN(norm2) * (1+scale2) + shift2 -> LN (mlp.net.0, folded) -> fc1 -> GELU ->
//   x += gate2 * fc2(.). The last block computes keys/values for all tokens but the query, attention output and MLP
//   for the last token only. A window's first token with no prefix sees only itself: it gets no query, and its
//   to_out(attention) = to_out(value) comes from one (D, D) GEMM with ov_w. mods[:, :, i] = (shift1, 1+scale1, gate1,
//   shift2, 1+scale2, gate2) of block i.
//   weights per block: qkv_w (3I, D), q_b (I: keys and values carry no bias; the rollout engine folds a value bias
//   into out_b, and a key bias does not change softmax), out_w (D, I), out_b, fc1_w (F, D), fc1_b, fc2_w (D, F),
//   fc2_b, ov_w (D, D) = out_w @ (value rows of qkv_w); eps per block: norm1, attn.norm, norm2, mlp.net.0.
//   Elementwise loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.
//   Candidates are processed in chunks of about chunk_rows window rows (a multiple of the thread count of chunks),
//   handed out to the threads one at a time, so threads never wait on each other; inside a chunk, attention runs per
//   group of heads and the MLP per slice of hidden units, so intermediates stay in the core's L2. GEMMs call the
//   BLAS torch exports (MKL in the x86 wheels), single-threaded inside the parallel region.
// window_blas_available() -> bool: whether that BLAS symbol was found (window_blocks refuses to run otherwise).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------------------- attention
// One query row against p shared-prefix keys and `own` own keys, for `heads` heads of width dh: o = softmax(q.k *
// dh^-0.5) v. Key j starts at keys[j]; its value sits kv_off_pre (prefix keys) or kv_off_own (own keys) after it.
template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void attend_group(const scalar_t* q, const scalar_t* const* keys, int64_t p, int64_t own, int64_t heads, int64_t dh,
                  int64_t kv_off_pre, int64_t kv_off_own, scalar_t* score, scalar_t* o) {
  const int64_t visible = p + own, cols = heads * dh;
  if (visible == 1) {  // a window's first token sees only itself: softmax of one score is exactly 1
    const scalar_t* v = keys[0] + kv_off_own;
    std::copy(v, v + cols, o);
    return;
  }
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(dh));
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t off = h * dh;
    scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      const scalar_t* k = keys[j] + off;
      scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t e = 0; e < dh; ++e) acc += q[off + e] * k[e];
      score[j] = acc * scale;
      mx = std::max(mx, score[j]);
    }
    scalar_t total = 0;
    for (int64_t j = 0; j < visible; ++j) {
      score[j] = std::exp(score[j] - mx);
      total += score[j];
    }
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

template <typename scalar_t>
void attend(const scalar_t* qkv, const scalar_t* prefix, int64_t m, int64_t s, int64_t p, int64_t rows_per_prefix,
            int64_t heads, int64_t dh, int64_t nq, scalar_t* out) {
  const int64_t inner = heads * dh, width = 3 * inner;
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    std::vector<const scalar_t*> keys(p + s);
    std::vector<scalar_t> score(p + s);
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

void check_prefix(const at::Tensor& pre, const at::Tensor& qkv_like, int64_t m, int64_t width) {
  TORCH_CHECK_VALUE(pre.dim() == 3 && pre.size(2) == width, "prefix_qkv must be (B, P, ", width, "), got ",
                    pre.sizes());
  TORCH_CHECK_VALUE(pre.size(0) >= 1 && m % pre.size(0) == 0, "prefix_qkv's B=", pre.size(0), " must divide M=", m);
  TORCH_CHECK_VALUE(pre.scalar_type() == qkv_like.scalar_type(), "prefix_qkv must have dtype ",
                    qkv_like.scalar_type(), ", got ", pre.scalar_type());
}

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

// ---------------------------------------------------------------------------------------------------- whole window
// LayerNorm statistics of x (d values), inlined into the callers below (so compiled for each of their targets).
template <typename scalar_t>
inline scalar_t mean_of(const scalar_t* x, int64_t d) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t e = 0; e < d; ++e) sum += x[e];
  return sum / d;
}

template <typename scalar_t>
inline scalar_t inv_std(const scalar_t* x, int64_t d, scalar_t mean, scalar_t eps) {
  scalar_t sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t e = 0; e < d; ++e) sq += (x[e] - mean) * (x[e] - mean);
  return scalar_t(1) / std::sqrt(sq / d + eps);
}

// out = LN(x), no affine (out may be x).
template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void normalize(const scalar_t* x, int64_t d, scalar_t eps, scalar_t* out) {
  const scalar_t mean = mean_of(x, d), rstd = inv_std(x, d, mean, eps);
#pragma omp simd
  for (int64_t e = 0; e < d; ++e) out[e] = (x[e] - mean) * rstd;
}

// out = LN2(LN1(x) * mul + shift), both LayerNorms without affine; the modulation pass also sums for LN2.
template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void norm_modulate_norm(const scalar_t* x, const scalar_t* shift, const scalar_t* mul, int64_t d, scalar_t eps1,
                        scalar_t eps2, scalar_t* out) {
  const scalar_t mean = mean_of(x, d), rstd = inv_std(x, d, mean, eps1);
  scalar_t sum2 = 0;
#pragma omp simd reduction(+ : sum2)
  for (int64_t e = 0; e < d; ++e) {
    out[e] = (x[e] - mean) * rstd * mul[e] + shift[e];
    sum2 += out[e];
  }
  const scalar_t mean2 = sum2 / d, rstd2 = inv_std(out, d, mean2, eps2);
#pragma omp simd
  for (int64_t e = 0; e < d; ++e) out[e] = (out[e] - mean2) * rstd2;
}

template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
scalar_t squared_distance(const scalar_t* z, const scalar_t* bias, const scalar_t* goal, int64_t d) {
  scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t e = 0; e < d; ++e) acc += (z[e] + bias[e] - goal[e]) * (z[e] + bias[e] - goal[e]);
  return acc;
}

template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void gated_add(scalar_t* x, const scalar_t* gate, const scalar_t* y, const scalar_t* bias, int64_t d) {
#pragma omp simd
  for (int64_t e = 0; e < d; ++e) x[e] += gate[e] * (y[e] + bias[e]);
}

template <typename scalar_t>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void add_bias(scalar_t* x, const scalar_t* bias, int64_t d) {
#pragma omp simd
  for (int64_t e = 0; e < d; ++e) x[e] += bias[e];
}

// ------------------------------------------------------------------------------------------------------------ GEMM
// out (r, n; row stride ldo) = beta * out + in (r, k; row stride ldi) @ w^T, w (n, k; row stride ldw): an nn.Linear
// weight or a block of one. Calls the BLAS gemm that torch's own CPU matmul uses (sgemm_/dgemm_, looked up at run
// time), so the many small GEMMs of a chunk skip ATen's per-call tensor bookkeeping. window_blocks refuses to run
// where torch exports no such symbol (window_blas_available() is false; the engine then runs op by op).
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
bool window_blas_available() { return blas_gemm<float>() != nullptr && blas_gemm<double>() != nullptr; }

template <typename scalar_t>
void linear_into(int64_t r, int64_t n, int64_t k, const scalar_t* in, int64_t ldi, const scalar_t* w, int64_t ldw,
                 scalar_t beta, scalar_t* out, int64_t ldo) {
  if (r == 0 || n == 0) return;
  // column-major: out^T (n, r) = (w^T)^T (n, k) @ in^T (k, r)
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(r), k_ = static_cast<int>(k);
  const int lda = static_cast<int>(ldw), ldb = static_cast<int>(ldi), ldc = static_cast<int>(ldo);
  const scalar_t one = 1;
  blas_gemm<scalar_t>()("T", "N", &m_, &n_, &k_, &one, w, &lda, in, &ldb, &beta, out, &ldc);
}

// y (rows, D') = act(h (rows, K) @ w1^T + b1) @ w2^T for w1 (F, K), w2 (D', F) contiguous, the hidden units F taken
// in slices of f's width so the (rows, slice) intermediate stays in L2; f: scratch with at least `rows` rows; h and y
// with row strides ldh, ldy. No output bias.
template <typename scalar_t>
void mlp_sliced(int64_t rows, const scalar_t* h, int64_t ldh, const at::Tensor& w1, const at::Tensor& b1,
                const at::Tensor& w2, c10::string_view approximate, at::Tensor& f, scalar_t* y, int64_t ldy) {
  const int64_t k = w1.size(1), hidden = w1.size(0), dout = w2.size(0), slice = f.size(1);
  const scalar_t* w1p = w1.data_ptr<scalar_t>();
  const scalar_t* w2p = w2.data_ptr<scalar_t>();
  scalar_t* fp = f.data_ptr<scalar_t>();
  for (int64_t u0 = 0; u0 < hidden; u0 += slice) {
    const int64_t cols = std::min(slice, hidden - u0);
    linear_into<scalar_t>(rows, cols, k, h, ldh, w1p + u0 * k, k, 0, fp, slice);  // bias added below
    const scalar_t* bp = b1.data_ptr<scalar_t>() + u0;
    for (int64_t r = 0; r < rows; ++r) add_bias<scalar_t>(fp + r * slice, bp, cols);
    auto f_v = at::from_blob(fp, {rows, cols}, {slice, 1}, f.options());
    at::gelu_(f_v, approximate);
    linear_into<scalar_t>(rows, dout, cols, fp, slice, w2p + u0, hidden, u0 == 0 ? 0 : 1, y, ldy);
  }
}

// The folded prediction head on the last token: LN (no affine) -> Linear -> act -> Linear (pred_proj with the final
// norm's affine, output_proj and BatchNorm folded in by the rollout engine). head = {w1 (F, D), b1, w2 (D', F), b2}.
struct Head {
  at::Tensor w1, b1, w2, b2;  // contiguous
  double eps;
  c10::string_view approximate;
  at::Tensor goal;  // (B, D'): emit the costs sum_d (latent - goal)^2 instead of latents; undefined: latents
  int64_t rows_per_goal;
};

struct Block {  // contiguous nn.Linear layouts (out_features, in_features)
  at::Tensor qkv_w, q_b, out_w, out_b, fc1_w, fc1_b, fc2_w, fc2_b, ov_w;
  double eps1, eps_attn, eps2, eps_mlp;
};

struct Mods {  // strided view (M, S, depth, 6, D)
  int64_t sm, ss, sl, sk;
};

// Scratch of one thread; rows = chunk * S window rows, position-major inside a chunk (row t*c + m), so the tokens that
// need a query (those whose attention output is used) form one contiguous row range, and so do those the MLP runs on.
struct Scratch {
  at::Tensor x, h, qkv, att, y, f, z;  // z: the head's output (chunk, D')
};

constexpr int64_t kGroupWidth = 256;  // attention heads (x dh) per column group, MLP hidden units per slice

// The blocks for candidates m0..m0+c-1. Attention runs per group of heads (q, k, v of the group -> attention ->
// partial to_out accumulated into y) and the MLP per slice of hidden units (fc1 slice -> GELU -> partial fc2), so
// the chunk's intermediates stay in the core's L2 while the chunk is large enough to amortise MKL's packing of the
// weights (done on every GEMM call).
template <typename scalar_t>
void blocks_chunk(const scalar_t* x_in, const scalar_t* mods, const Mods& ms, const std::vector<Block>& blocks,
                  const std::vector<const scalar_t*>& prefix, int64_t p, int64_t rows_per_prefix, int64_t m0, int64_t c,
                  int64_t s, int64_t d, int64_t heads, int64_t dh, c10::string_view approximate, const Head* head,
                  Scratch& w, scalar_t* out) {
  const int64_t depth = static_cast<int64_t>(blocks.size()), inner = heads * dh, width = 3 * inner;
  const int64_t group = std::max<int64_t>(1, std::min(heads, kGroupWidth / dh)), gw = group * dh;
  scalar_t* x = w.x.data_ptr<scalar_t>();
  for (int64_t m = 0; m < c; ++m)
    for (int64_t t = 0; t < s; ++t) std::copy_n(x_in + ((m0 + m) * s + t) * d, d, x + (t * c + m) * d);
  std::vector<const scalar_t*> keys(p + s);
  std::vector<scalar_t> score(p + s);
  scalar_t* hp = w.h.data_ptr<scalar_t>();
  scalar_t* qp = w.qkv.data_ptr<scalar_t>();  // (rows, 3 * gw): [q | k | v] of the current head group
  scalar_t* ap = w.att.data_ptr<scalar_t>();
  const int64_t qkv_ld = 3 * gw;
  for (int64_t i = 0; i < depth; ++i) {
    const Block& b = blocks[i];
    const bool last = i == depth - 1;
    auto mod = [&](int64_t row, int64_t k) {  // row = t * c + m
      return mods + (m0 + row % c) * ms.sm + (row / c) * ms.ss + i * ms.sl + k * ms.sk;
    };
    // attention output is used for tokens t0..s-1 (rows r0..); attention runs for those from rq on: a window's first
    // token (rows 0..c-1 when there is no prefix) sees only itself, so to_out(its value) = ov_w @ h, no query needed
    const int64_t t0 = last ? s - 1 : 0, tq = (p == 0 && t0 == 0) ? 1 : t0;
    const int64_t rows = s * c, r0 = t0 * c, rq = tq * c, nrows = rows - r0;
    for (int64_t r = 0; r < rows; ++r)
      norm_modulate_norm<scalar_t>(x + r * d, mod(r, 0), mod(r, 1), d, b.eps1, b.eps_attn, hp + r * d);
    scalar_t* yp = w.y.data_ptr<scalar_t>();  // rows r0.. of the block's to_out / fc2 outputs
    linear_into<scalar_t>(rq - r0, d, d, hp + r0 * d, d, b.ov_w.data_ptr<scalar_t>(), d, 0, yp, d);
    for (int64_t h0 = 0; h0 < heads && rq < rows; h0 += group) {
      const int64_t gh = std::min(group, heads - h0), cols = gh * dh, col0 = h0 * dh;
      for (int64_t part = 0; part < 3; ++part) {  // q (rows needing one), k, v (all rows); biases added below
        const int64_t from = part == 0 ? rq : 0;
        const scalar_t* w_part = b.qkv_w.data_ptr<scalar_t>() + (part * inner + col0) * d;  // rows of this group
        linear_into<scalar_t>(rows - from, cols, d, hp + from * d, d, w_part, d, 0, qp + from * qkv_ld + part * gw,
                              qkv_ld);
      }
      const scalar_t* qb = b.q_b.data_ptr<scalar_t>() + col0;
      for (int64_t r = rq; r < rows; ++r) {
        const int64_t t = r / c, m = r % c;
        add_bias<scalar_t>(qp + r * qkv_ld, qb, cols);
        for (int64_t j = 0; j < p; ++j)
          keys[j] = prefix[i] + (((m0 + m) / rows_per_prefix) * p + j) * width + inner + col0;
        for (int64_t j = 0; j <= t; ++j) keys[p + j] = qp + (j * c + m) * qkv_ld + gw;
        attend_group<scalar_t>(qp + r * qkv_ld, keys.data(), p, t + 1, gh, dh, inner, gw, score.data(),
                               ap + (r - rq) * gw);
      }
      linear_into<scalar_t>(rows - rq, d, cols, ap, gw, b.out_w.data_ptr<scalar_t>() + col0, inner, h0 == 0 ? 0 : 1,
                            yp + (rq - r0) * d, d);
    }
    const scalar_t* ob = b.out_b.data_ptr<scalar_t>();
    for (int64_t r = r0; r < rows; ++r) gated_add<scalar_t>(x + r * d, mod(r, 2), yp + (r - r0) * d, ob, d);
    for (int64_t r = r0; r < rows; ++r)
      norm_modulate_norm<scalar_t>(x + r * d, mod(r, 3), mod(r, 4), d, b.eps2, b.eps_mlp, hp + (r - r0) * d);
    mlp_sliced<scalar_t>(nrows, hp, d, b.fc1_w, b.fc1_b, b.fc2_w, approximate, w.f, yp, d);
    const scalar_t* fb = b.fc2_b.data_ptr<scalar_t>();
    for (int64_t r = r0; r < rows; ++r) gated_add<scalar_t>(x + r * d, mod(r, 5), yp + (r - r0) * d, fb, d);
  }
  const scalar_t* xl = x + (s - 1) * c * d;  // the last token's residual stream of candidates m0..m0+c-1
  if (head == nullptr) {
    std::copy_n(xl, c * d, out + m0 * d);
    return;
  }
  for (int64_t m = 0; m < c; ++m) normalize<scalar_t>(xl + m * d, d, head->eps, hp + m * d);
  const int64_t dout = head->w2.size(0);
  scalar_t* zp = w.z.data_ptr<scalar_t>();
  mlp_sliced<scalar_t>(c, hp, d, head->w1, head->b1, head->w2, head->approximate, w.f, zp, dout);
  const scalar_t* b2 = head->b2.data_ptr<scalar_t>();
  if (head->goal.defined()) {
    const scalar_t* g = head->goal.data_ptr<scalar_t>();
    for (int64_t m = 0; m < c; ++m)
      out[m0 + m] = squared_distance<scalar_t>(zp + m * dout, b2, g + ((m0 + m) / head->rows_per_goal) * dout, dout);
  } else {
    for (int64_t m = 0; m < c; ++m) {
      scalar_t* o = out + (m0 + m) * dout;
      std::copy_n(zp + m * dout, dout, o);
      add_bias<scalar_t>(o, b2, dout);
    }
  }
}

template <typename scalar_t>
void blocks_all(const at::Tensor& x, const at::Tensor& mods, const std::vector<Block>& blocks,
                const std::vector<at::Tensor>& prefix_qkv, int64_t heads, c10::string_view approximate,
                const Head* head, int64_t chunk_rows, at::Tensor& out) {
  const int64_t m = x.size(0), s = x.size(1), d = x.size(2);
  const int64_t inner = blocks[0].out_w.size(1), dh = inner / heads;
  const int64_t hidden = std::max(blocks[0].fc1_w.size(0), head ? head->w1.size(0) : int64_t(0));
  const int64_t gw = std::max<int64_t>(1, std::min(heads, kGroupWidth / dh)) * dh;
  const Mods ms{mods.stride(0), mods.stride(1), mods.stride(2), mods.stride(3)};
  const int64_t p = prefix_qkv.empty() ? 0 : prefix_qkv[0].size(1);
  const int64_t rows_per_prefix = prefix_qkv.empty() ? 1 : m / prefix_qkv[0].size(0);
  std::vector<const scalar_t*> prefix;
  for (const auto& t : prefix_qkv) prefix.push_back(t.data_ptr<scalar_t>());
  // about chunk_rows window rows per chunk, and a multiple of the thread count of chunks (balanced threads)
  const int64_t threads = at::get_num_threads();
  int64_t nchunks = std::max<int64_t>(1, (m * s + chunk_rows - 1) / chunk_rows);
  nchunks = std::min(m, (nchunks + threads - 1) / threads * threads);
  const int64_t chunk = (m + nchunks - 1) / nchunks;
  nchunks = (m + chunk - 1) / chunk;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* mp = mods.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  std::atomic<int64_t> next_chunk{0};  // chunks are taken dynamically: a core slowed down by others takes fewer
  at::parallel_for(0, std::min(threads, nchunks), 1, [&](int64_t, int64_t) {
    const int64_t rows = chunk * s;
    auto opts = x.options();
    Scratch w{at::empty({rows, d}, opts), at::empty({rows, d}, opts), at::empty({rows, 3 * gw}, opts),
              at::empty({rows, gw}, opts), at::empty({rows, d}, opts),
              at::empty({rows, std::min(hidden, kGroupWidth * 2)}, opts),
              at::empty({chunk, head ? head->w2.size(0) : 0}, opts)};
    for (int64_t ci = next_chunk++; ci < nchunks; ci = next_chunk++) {
      const int64_t m0 = ci * chunk, c = std::min(chunk, m - m0);
      blocks_chunk<scalar_t>(xp, mp, ms, blocks, prefix, p, rows_per_prefix, m0, c, s, d, heads, dh, approximate, head,
                             w, op);
    }
  });
}

at::Tensor window_blocks_cpu(const at::Tensor& x_in, const at::Tensor& mods, at::TensorList prefix_qkv,
                             at::TensorList weights, at::ArrayRef<double> eps, int64_t heads,
                             c10::string_view gelu_approximate, int64_t chunk_rows, at::TensorList head_weights,
                             double head_eps, c10::string_view head_approximate,
                             const c10::optional<at::Tensor>& goal) {
  TORCH_CHECK(window_blas_available(), "window_blocks needs the BLAS sgemm_/dgemm_ exported by torch's CPU library");
  TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be (M, S, D), got ", x_in.sizes());
  const int64_t m = x_in.size(0), s = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK_VALUE(weights.size() % 9 == 0 && !weights.empty(), "weights must hold 9 tensors per block, got ",
                    weights.size());
  const int64_t depth = static_cast<int64_t>(weights.size() / 9);
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps.size()) == 4 * depth, "eps must hold 4 values per block, got ",
                    eps.size());
  TORCH_CHECK_VALUE(mods.dim() == 5 && mods.size(0) == m && mods.size(1) == s && mods.size(2) == depth &&
                        mods.size(3) == 6 && mods.size(4) == d && mods.stride(4) == 1,
                    "mods must be (M, S, depth, 6, D) = (", m, ", ", s, ", ", depth, ", 6, ", d,
                    ") with a contiguous last dimension, got ", mods.sizes(), " strides ", mods.strides());
  TORCH_CHECK_VALUE(prefix_qkv.empty() || static_cast<int64_t>(prefix_qkv.size()) == depth,
                    "prefix_qkv must be empty or hold one tensor per block");
  TORCH_CHECK_VALUE(heads >= 1 && chunk_rows >= 1, "heads and chunk_rows must be >= 1");
  TORCH_CHECK_VALUE(m * s < std::numeric_limits<int>::max(), "M*S=", m * s, " rows exceed the BLAS int range");
  TORCH_CHECK_VALUE(mods.scalar_type() == x_in.scalar_type(), "mods must have x's dtype");
  const at::Tensor x = x_in.contiguous();
  // the GEMMs read raw pointers: every shape is checked here, against block 0's inner width and MLP hidden size
  TORCH_CHECK_VALUE(weights[0].dim() == 2 && weights[0].size(0) % (3 * heads) == 0 && weights[4].dim() == 2,
                    "qkv weight of block 0 must be (3*heads*dh, D), got ", weights[0].sizes());
  const int64_t inner = weights[0].size(0) / 3, hidden = weights[4].size(0);
  std::vector<Block> blocks;
  for (int64_t i = 0; i < depth; ++i) {
    const auto* w = &weights[9 * i];
    for (int k = 0; k < 9; ++k)
      TORCH_CHECK_VALUE(w[k].scalar_type() == x.scalar_type(), "weights must have x's dtype");
    auto check = [&](int k, std::initializer_list<int64_t> shape, const char* what) {
      TORCH_CHECK_VALUE(w[k].sizes().vec() == std::vector<int64_t>(shape), what, " of block ", i, " must be ",
                        c10::IntArrayRef(shape), " (D=", d, ", 3*heads*dh=", 3 * inner, ", F=", hidden, "), got ",
                        w[k].sizes());
    };
    check(0, {3 * inner, d}, "qkv weight");
    check(1, {inner}, "query bias");
    check(2, {d, inner}, "to_out weight");
    check(3, {d}, "to_out bias");
    check(4, {hidden, d}, "fc1 weight");
    check(5, {hidden}, "fc1 bias");
    check(6, {d, hidden}, "fc2 weight");
    check(7, {d}, "fc2 bias");
    check(8, {d, d}, "ov weight");
    blocks.push_back(Block{w[0].contiguous(), w[1].contiguous(), w[2].contiguous(), w[3].contiguous(),
                           w[4].contiguous(), w[5].contiguous(), w[6].contiguous(), w[7].contiguous(),
                           w[8].contiguous(), eps[4 * i], eps[4 * i + 1], eps[4 * i + 2], eps[4 * i + 3]});
  }
  std::vector<at::Tensor> prefix;
  for (const auto& t : prefix_qkv) {
    prefix.push_back(t.contiguous());
    check_prefix(prefix.back(), x, m, 3 * inner);
    TORCH_CHECK_VALUE(prefix.back().size(1) == prefix[0].size(1) && prefix.back().size(0) == prefix[0].size(0),
                      "all prefix_qkv tensors must share (B, P)");
  }
  c10::optional<Head> head;
  if (!head_weights.empty()) {
    TORCH_CHECK_VALUE(head_weights.size() == 4, "head must hold 4 tensors (w1, b1, w2, b2), got ", head_weights.size());
    const auto &w1 = head_weights[0], &b1 = head_weights[1], &w2 = head_weights[2], &b2 = head_weights[3];
    for (const auto& t : head_weights)
      TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "head weights must have x's dtype");
    TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == d && b1.dim() == 1 && b1.size(0) == w1.size(0) && w2.dim() == 2 &&
                          w2.size(1) == w1.size(0) && b2.dim() == 1 && b2.size(0) == w2.size(0),
                      "head must be w1 (F, D=", d, "), b1 (F), w2 (D', F), b2 (D'), got ", w1.sizes(), ", ",
                      b1.sizes(), ", ", w2.sizes(), ", ", b2.sizes());
    head = Head{w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(), head_eps, head_approximate,
                at::Tensor(), 1};
    if (goal.has_value()) {
      TORCH_CHECK_VALUE(goal->dim() == 2 && goal->size(1) == w2.size(0) && goal->size(0) >= 1 &&
                            m % goal->size(0) == 0 && goal->scalar_type() == x.scalar_type(),
                        "goal must be (B, ", w2.size(0), ") with B dividing M=", m, " and x's dtype, got ",
                        goal->sizes(), " ", goal->scalar_type());
      head->goal = goal->contiguous();
      head->rows_per_goal = m / goal->size(0);
    }
  } else {
    TORCH_CHECK_VALUE(!goal.has_value(), "goal needs the head weights");
  }
  auto out = !head ? at::empty({m, d}, x.options())
             : head->goal.defined() ? at::empty({m}, x.options())
                                    : at::empty({m, head->w2.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "window_blocks_cpu", [&] {
    blocks_all<scalar_t>(x, mods, blocks, prefix, heads, gelu_approximate, head ? &*head : nullptr, chunk_rows, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lewm_fast, m) {
  m.def("window_attention(Tensor qkv, Tensor? prefix_qkv, int heads, int num_queries) -> Tensor");
  m.def(
      "window_blocks(Tensor x, Tensor mods, Tensor[] prefix_qkv, Tensor[] weights, float[] eps, int heads, "
      "str gelu_approximate, int chunk_rows, Tensor[] head, float head_eps, str head_approximate, Tensor? goal) "
      "-> Tensor");
  m.def("window_blas_available() -> bool", &window_blas_available);
}

TORCH_LIBRARY_IMPL(lewm_fast, CPU, m) {
  m.impl("window_attention", &window_attention_cpu);
  m.impl("window_blocks", &window_blocks_cpu);
}
