// The LeWM predictor's blocks over a short window of tokens on CPU (float32/float64), a whole rollout step per call:
//
// window_blocks(x (M, S, D), mods (M, S, depth, 6, D) strided, prefix_qkv[depth] or [], weights[9*depth],
//               eps[4*depth], heads, gelu_approximate, chunk_rows, head[4] or [], head_eps, head_approximate,
//               goal (B, D')?, packed?) -> (M, D) without a head; (M, D') with one; (M,) with a head and a goal
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
//   BLAS torch exports (MKL in the x86 wheels), single-threaded inside the parallel region. float32 rows whose width
//   is a multiple of 16 (attention heads, LayerNorm rows) run 16 lanes wide (GCC vector extensions).
//   packed: window_pack of these weights and head (float32): MKL-packed weight blocks, so no GEMM repacks a weight.
// window_pack(weights[9*depth], heads, head[4] or [], rows) -> uint8 buffer: every weight block window_blocks' GEMMs
//   read, packed once by MKL's sgemm_pack for GEMMs of about `rows` rows (see "packed weights" below).
// window_blas_available() -> bool: whether that BLAS symbol was found (window_blocks refuses to run otherwise).
// window_packing_available() -> bool: whether MKL's packed-GEMM API was found (window_pack refuses otherwise).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "blas.h"
#include "ops.h"
#include "vec.h"
#include "window_attention.h"

namespace lewm_fast {
namespace {

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

// Subtracts the mean of the NV * 16 values in v from them; returns 1 / sqrt(their variance + eps).
template <int NV>
inline float center(v16f (&v)[NV], float eps) {
  constexpr float inv_d = 1.0f / (16 * NV);
  v16f acc{};
  for (int i = 0; i < NV; ++i) acc += v[i];
  const float mean = sum16(acc) * inv_d;
  acc = v16f{};
  for (int i = 0; i < NV; ++i) {
    v[i] -= mean;
    acc += v[i] * v[i];
  }
  return 1.0f / std::sqrt(sum16(acc) * inv_d + eps);
}

// norm_modulate_norm for float32 rows of NV * 16 values, held in registers from the load to the store.
template <int NV>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void norm_modulate_norm_vec(const float* x, const float* shift, const float* mul, float eps1, float eps2, float* out) {
  v16f v[NV];
  for (int i = 0; i < NV; ++i) v[i] = load16(x + 16 * i);
  const float rstd = center(v, eps1);
  for (int i = 0; i < NV; ++i) v[i] = v[i] * rstd * load16(mul + 16 * i) + load16(shift + 16 * i);
  const float rstd2 = center(v, eps2);
  for (int i = 0; i < NV; ++i) store16(out + 16 * i, v[i] * rstd2);
}

using NormModulateNormVec = void (*)(const float*, const float*, const float*, float, float, float*);

template <int... NV>
constexpr std::array<NormModulateNormVec, sizeof...(NV)> norm_modulate_norm_vecs(std::integer_sequence<int, NV...>) {
  return {&norm_modulate_norm_vec<NV + 1>...};
}

// norm_modulate_norm of one row; float32 rows of 16...256 values (a multiple of 16) stay in registers.
template <typename scalar_t>
inline void norm_modulate_norm_row(const scalar_t* x, const scalar_t* shift, const scalar_t* mul, int64_t d,
                                   scalar_t eps1, scalar_t eps2, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    static constexpr auto vecs = norm_modulate_norm_vecs(std::make_integer_sequence<int, 16>());
    if (d % 16 == 0 && d <= 256) return vecs[d / 16 - 1](x, shift, mul, eps1, eps2, out);
  }
  norm_modulate_norm<scalar_t>(x, shift, mul, d, eps1, eps2, out);
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

// Packed copies (window_pack) of the weight blocks an MLP's GEMMs read, per slice of its hidden units.
struct MlpPacks {
  std::vector<const float*> fc1, fc2;  // rows u0.. of w1 / columns u0.. of w2
};

// y (rows, D') = act(h (rows, K) @ w1^T + b1) @ w2^T for w1 (F, K), w2 (D', F) contiguous, the hidden units F taken
// in slices of f's width so the (rows, slice) intermediate stays in L2; f: scratch with at least `rows` rows; h and y
// with row strides ldh, ldy. No output bias. packs: the weights' packed blocks or null; with them, h is packed once
// into h_packed (scratch) for all slices' fc1.
template <typename scalar_t>
void mlp_sliced(int64_t rows, const scalar_t* h, int64_t ldh, const at::Tensor& w1, const at::Tensor& b1,
                const at::Tensor& w2, c10::string_view approximate, at::Tensor& f, scalar_t* y, int64_t ldy,
                const MlpPacks* packs, scalar_t* h_packed) {
  const int64_t k = w1.size(1), hidden = w1.size(0), dout = w2.size(0), slice = f.size(1);
  const scalar_t* w1p = w1.data_ptr<scalar_t>();
  const scalar_t* w2p = w2.data_ptr<scalar_t>();
  scalar_t* fp = f.data_ptr<scalar_t>();
  if (packs) pack_rows<scalar_t>(rows, k, h, ldh, std::min(slice, hidden), h_packed);
  for (int64_t u0 = 0, u = 0; u0 < hidden; u0 += slice, ++u) {
    const int64_t cols = std::min(slice, hidden - u0);
    const scalar_t* p1 = packs ? reinterpret_cast<const scalar_t*>(packs->fc1[u]) : nullptr;
    const scalar_t* p2 = packs ? reinterpret_cast<const scalar_t*>(packs->fc2[u]) : nullptr;
    linear_into<scalar_t>(rows, cols, k, h, ldh, w1p + u0 * k, k, 0, fp, slice, p1, packs ? h_packed : nullptr);
    const scalar_t* bp = b1.data_ptr<scalar_t>() + u0;
    for (int64_t r = 0; r < rows; ++r) add_bias<scalar_t>(fp + r * slice, bp, cols);
    auto f_v = at::from_blob(fp, {rows, cols}, {slice, 1}, f.options());
    at::gelu_(f_v, approximate);
    linear_into<scalar_t>(rows, dout, cols, fp, slice, w2p + u0, hidden, u0 == 0 ? 0 : 1, y, ldy, p2);
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
  at::Tensor h_all, h_q;  // with packed weights: the chunk's h packed for the key/value (all rows) and query GEMMs
};

constexpr int64_t kGroupWidth = 256;  // attention heads (x dh) per column group, MLP hidden units per slice

inline int64_t heads_per_group(int64_t heads, int64_t dh) {
  return std::max<int64_t>(1, std::min(heads, kGroupWidth / dh));
}

// Hidden units per MLP slice, shared by the blocks' MLPs and the head (their widest hidden layer sets the scratch).
inline int64_t mlp_slice(const std::vector<Block>& blocks, const Head* head) {
  const int64_t hidden = std::max(blocks[0].fc1_w.size(0), head ? head->w1.size(0) : int64_t(0));
  return std::min(hidden, kGroupWidth * 2);
}

// ---------------------------------------------------------------------------------------------- packed weights
// window_pack(weights, heads, head, rows) -> uint8 buffer: every weight block a GEMM of window_blocks reads, packed
// once by MKL for GEMMs of about `rows` rows, behind a header of the weight tensors' addresses (window_blocks checks
// them: a buffer packed from other tensors is refused). The buffer must stay where it is (MKL's packed layout
// depends on its alignment): keep the tensor, do not copy it. Each block gets the bytes sgemm_pack_get_size asks
// for, an upper bound of about 8 MB however small the block: for the default LeWM that reserves about 1.3 GB of
// address space, of which about 40 MB (the size of the weights) is ever written, so only that much becomes resident.
struct BlockPacks {
  const float* ov = nullptr;
  std::vector<const float*> qkv;  // q, k, v rows of each head group
  std::vector<const float*> out;  // to_out columns of each head group
  MlpPacks mlp;
};

struct WindowPacks {
  std::vector<BlockPacks> blocks;
  MlpPacks head;
};

// Walks the weight blocks of window_blocks' GEMMs in one fixed order, calling place(w, n, k, ldw) -> the address of
// that block's packed copy (w: rows of n weights of width k with row stride ldw).
template <typename Place>
WindowPacks layout_packs(const std::vector<Block>& blocks, const Head* head, int64_t heads, Place place) {
  const int64_t d = blocks[0].qkv_w.size(1), inner = blocks[0].out_w.size(1), dh = inner / heads;
  const int64_t group = heads_per_group(heads, dh), slice = mlp_slice(blocks, head);
  auto mlp = [&](const at::Tensor& w1, const at::Tensor& w2) {
    MlpPacks packs;
    const int64_t k = w1.size(1), hidden = w1.size(0), dout = w2.size(0);
    for (int64_t u0 = 0; u0 < hidden; u0 += slice) {
      const int64_t cols = std::min(slice, hidden - u0);
      packs.fc1.push_back(place(w1.data_ptr<float>() + u0 * k, cols, k, k));
      packs.fc2.push_back(place(w2.data_ptr<float>() + u0, dout, cols, hidden));
    }
    return packs;
  };
  WindowPacks packs;
  for (const Block& b : blocks) {
    BlockPacks bp;
    bp.ov = place(b.ov_w.data_ptr<float>(), d, d, d);
    for (int64_t h0 = 0; h0 < heads; h0 += group) {
      const int64_t cols = std::min(group, heads - h0) * dh, col0 = h0 * dh;
      for (int64_t part = 0; part < 3; ++part)
        bp.qkv.push_back(place(b.qkv_w.data_ptr<float>() + (part * inner + col0) * d, cols, d, d));
      bp.out.push_back(place(b.out_w.data_ptr<float>() + col0, d, cols, inner));
    }
    bp.mlp = mlp(b.fc1_w, b.fc2_w);
    packs.blocks.push_back(std::move(bp));
  }
  if (head) packs.head = mlp(head->w1, head->w2);
  return packs;
}

// The header of a packed buffer: how many weight tensors it was packed from, then their addresses.
std::vector<uintptr_t> packed_header(const std::vector<Block>& blocks, const Head* head) {
  std::vector<uintptr_t> ptrs{0};
  for (const Block& b : blocks)
    for (const at::Tensor* t : {&b.qkv_w, &b.out_w, &b.fc1_w, &b.fc2_w, &b.ov_w})
      ptrs.push_back(reinterpret_cast<uintptr_t>(t->data_ptr()));
  if (head)
    for (const at::Tensor* t : {&head->w1, &head->w2}) ptrs.push_back(reinterpret_cast<uintptr_t>(t->data_ptr()));
  ptrs[0] = ptrs.size() - 1;
  return ptrs;
}

inline int64_t header_bytes(size_t entries) {
  return static_cast<int64_t>((entries * sizeof(uintptr_t) + 63) / 64 * 64);
}

// Packed blocks laid end to end after the header (base null: only sizes the buffer); pack: also fill them.
WindowPacks place_packs(const std::vector<Block>& blocks, const Head* head, int64_t heads, int64_t rows,
                        uint8_t* base, bool pack, int64_t* total_bytes) {
  int64_t offset = header_bytes(packed_header(blocks, head).size());
  auto packs = layout_packs(blocks, head, heads, [&](const float* w, int64_t n, int64_t k, int64_t ldw) {
    auto* dest = base ? reinterpret_cast<float*>(base + offset) : nullptr;
    if (pack) pack_weight(w, n, k, ldw, rows, dest);
    offset += packed_bytes("A", n, rows, k);
    return static_cast<const float*>(dest);
  });
  *total_bytes = offset;
  return packs;
}

// The blocks for candidates m0..m0+c-1. Attention runs per group of heads (q, k, v of the group -> attention ->
// partial to_out accumulated into y) and the MLP per slice of hidden units (fc1 slice -> GELU -> partial fc2), so
// the chunk's intermediates stay in the core's L2. Without packed weights (packs null) every GEMM call repacks its
// weight block, which a chunk of a few hundred rows amortises; with them, h is packed once for the group GEMMs.
template <typename scalar_t>
void blocks_chunk(const scalar_t* x_in, const scalar_t* mods, const Mods& ms, const std::vector<Block>& blocks,
                  const std::vector<const scalar_t*>& prefix, int64_t p, int64_t rows_per_prefix, int64_t m0, int64_t c,
                  int64_t s, int64_t d, int64_t heads, int64_t dh, c10::string_view approximate, const Head* head,
                  const WindowPacks* packs, Scratch& w, scalar_t* out) {
  const int64_t depth = static_cast<int64_t>(blocks.size()), inner = heads * dh, width = 3 * inner;
  const int64_t group = heads_per_group(heads, dh), gw = group * dh;
  auto packed = [&](const float* ptr) { return packs ? reinterpret_cast<const scalar_t*>(ptr) : nullptr; };
  scalar_t* h_all = packs ? w.h_all.data_ptr<scalar_t>() : nullptr;
  scalar_t* h_q = packs ? w.h_q.data_ptr<scalar_t>() : nullptr;
  scalar_t* x = w.x.data_ptr<scalar_t>();
  for (int64_t m = 0; m < c; ++m)
    for (int64_t t = 0; t < s; ++t) std::copy_n(x_in + ((m0 + m) * s + t) * d, d, x + (t * c + m) * d);
  std::vector<const scalar_t*> keys(p + s);
  std::vector<scalar_t> score(group * (p + s) + 16);
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
      norm_modulate_norm_row<scalar_t>(x + r * d, mod(r, 0), mod(r, 1), d, b.eps1, b.eps_attn, hp + r * d);
    const BlockPacks* bp = packs ? &packs->blocks[i] : nullptr;
    if (bp) {  // h feeds the q (rows rq..), k and v (all rows) GEMMs of every head group
      pack_rows<scalar_t>(rows, d, hp, d, gw, h_all);
      if (rq > 0) pack_rows<scalar_t>(rows - rq, d, hp + rq * d, d, gw, h_q);
    }
    scalar_t* yp = w.y.data_ptr<scalar_t>();  // rows r0.. of the block's to_out / fc2 outputs
    linear_into<scalar_t>(rq - r0, d, d, hp + r0 * d, d, b.ov_w.data_ptr<scalar_t>(), d, 0, yp, d,
                          packed(bp ? bp->ov : nullptr));
    for (int64_t h0 = 0, g = 0; h0 < heads && rq < rows; h0 += group, ++g) {
      const int64_t gh = std::min(group, heads - h0), cols = gh * dh, col0 = h0 * dh;
      for (int64_t part = 0; part < 3; ++part) {  // q (rows needing one), k, v (all rows); biases added below
        const int64_t from = part == 0 ? rq : 0;
        const scalar_t* w_part = b.qkv_w.data_ptr<scalar_t>() + (part * inner + col0) * d;  // rows of this group
        linear_into<scalar_t>(rows - from, cols, d, hp + from * d, d, w_part, d, 0, qp + from * qkv_ld + part * gw,
                              qkv_ld, packed(bp ? bp->qkv[3 * g + part] : nullptr),
                              bp ? (from == 0 ? h_all : h_q) : nullptr);
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
                            yp + (rq - r0) * d, d, packed(bp ? bp->out[g] : nullptr));
    }
    const scalar_t* ob = b.out_b.data_ptr<scalar_t>();
    for (int64_t r = r0; r < rows; ++r) gated_add<scalar_t>(x + r * d, mod(r, 2), yp + (r - r0) * d, ob, d);
    for (int64_t r = r0; r < rows; ++r)
      norm_modulate_norm_row<scalar_t>(x + r * d, mod(r, 3), mod(r, 4), d, b.eps2, b.eps_mlp, hp + (r - r0) * d);
    mlp_sliced<scalar_t>(nrows, hp, d, b.fc1_w, b.fc1_b, b.fc2_w, approximate, w.f, yp, d, bp ? &bp->mlp : nullptr,
                         h_all);
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
  mlp_sliced<scalar_t>(c, hp, d, head->w1, head->b1, head->w2, head->approximate, w.f, zp, dout,
                       packs ? &packs->head : nullptr, h_all);
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
                const Head* head, const WindowPacks* packs, int64_t chunk_rows, at::Tensor& out) {
  const int64_t m = x.size(0), s = x.size(1), d = x.size(2);
  const int64_t inner = blocks[0].out_w.size(1), dh = inner / heads;
  const int64_t gw = heads_per_group(heads, dh) * dh, slice = mlp_slice(blocks, head);
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
    const MklSingleThread single;  // packed operands need the thread count they were packed with
    const int64_t rows = chunk * s;
    auto opts = x.options();
    Scratch w{at::empty({rows, d}, opts), at::empty({rows, d}, opts), at::empty({rows, 3 * gw}, opts),
              at::empty({rows, gw}, opts), at::empty({rows, d}, opts), at::empty({rows, slice}, opts),
              at::empty({chunk, head ? head->w2.size(0) : 0}, opts)};
    if (packs) {  // h packed for the head groups' GEMMs (and then for the MLP's fc1): bytes as floats
      const int64_t bytes = std::max(packed_bytes("B", gw, rows, d), packed_bytes("B", slice, rows, d));
      w.h_all = at::empty({bytes / 4}, opts);
      w.h_q = at::empty({bytes / 4}, opts);
    }
    for (int64_t ci = next_chunk++; ci < nchunks; ci = next_chunk++) {
      const int64_t m0 = ci * chunk, c = std::min(chunk, m - m0);
      blocks_chunk<scalar_t>(xp, mp, ms, blocks, prefix, p, rows_per_prefix, m0, c, s, d, heads, dh, approximate, head,
                             packs, w, op);
    }
  });
}

// The blocks' weights (9 per block, see the top of the file), every shape checked: the GEMMs read raw pointers.
// eps: 4 per block.
std::vector<Block> parse_blocks(at::TensorList weights, at::ArrayRef<double> eps, int64_t d, int64_t heads,
                                at::ScalarType dtype) {
  TORCH_CHECK_VALUE(weights.size() % 9 == 0 && !weights.empty(), "weights must hold 9 tensors per block, got ",
                    weights.size());
  const int64_t depth = static_cast<int64_t>(weights.size() / 9);
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps.size()) == 4 * depth, "eps must hold 4 values per block, got ",
                    eps.size());
  TORCH_CHECK_VALUE(heads >= 1, "heads must be >= 1");
  TORCH_CHECK_VALUE(weights[0].dim() == 2 && weights[0].size(0) % (3 * heads) == 0 && weights[4].dim() == 2,
                    "qkv weight of block 0 must be (3*heads*dh, D), got ", weights[0].sizes());
  const int64_t inner = weights[0].size(0) / 3, hidden = weights[4].size(0);  // block 0's widths hold for all
  std::vector<Block> blocks;
  for (int64_t i = 0; i < depth; ++i) {
    const auto* w = &weights[9 * i];
    for (int k = 0; k < 9; ++k)
      TORCH_CHECK_VALUE(w[k].scalar_type() == dtype, "weights must have x's dtype");
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
  return blocks;
}

// The folded head {w1 (F, D), b1, w2 (D', F), b2}, or none for an empty list.
c10::optional<Head> parse_head(at::TensorList head_weights, double eps, c10::string_view approximate, int64_t d,
                               at::ScalarType dtype) {
  if (head_weights.empty()) return c10::nullopt;
  TORCH_CHECK_VALUE(head_weights.size() == 4, "head must hold 4 tensors (w1, b1, w2, b2), got ", head_weights.size());
  const auto &w1 = head_weights[0], &b1 = head_weights[1], &w2 = head_weights[2], &b2 = head_weights[3];
  for (const auto& t : head_weights) TORCH_CHECK_VALUE(t.scalar_type() == dtype, "head weights must have x's dtype");
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == d && b1.dim() == 1 && b1.size(0) == w1.size(0) && w2.dim() == 2 &&
                        w2.size(1) == w1.size(0) && b2.dim() == 1 && b2.size(0) == w2.size(0),
                    "head must be w1 (F, D=", d, "), b1 (F), w2 (D', F), b2 (D'), got ", w1.sizes(), ", ", b1.sizes(),
                    ", ", w2.sizes(), ", ", b2.sizes());
  return Head{w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(), eps, approximate, at::Tensor(), 1};
}

}  // namespace

at::Tensor window_pack_cpu(at::TensorList weights, int64_t heads, at::TensorList head_weights, int64_t rows) {
  TORCH_CHECK(mkl_packing_available(), "window_pack needs MKL's sgemm_pack/sgemm_compute (torch's MKL builds)");
  TORCH_CHECK_VALUE(!weights.empty() && weights[0].dim() == 2, "weights must hold 9 tensors per block");
  TORCH_CHECK_VALUE(rows >= 1, "rows must be >= 1, got ", rows);
  const int64_t d = weights[0].size(1);
  TORCH_CHECK_VALUE(weights[0].scalar_type() == at::kFloat, "window_pack packs float32 weights, got ",
                    weights[0].scalar_type());
  const std::vector<double> no_eps(weights.size() / 9 * 4, 0.0);  // packing reads no eps
  const auto blocks = parse_blocks(weights, no_eps, d, heads, at::kFloat);
  const auto head = parse_head(head_weights, 0.0, "none", d, at::kFloat);
  const Head* hp = head ? &*head : nullptr;
  const MklSingleThread single;  // window_blocks computes with MKL single-threaded
  int64_t bytes = 0;
  place_packs(blocks, hp, heads, rows, nullptr, false, &bytes);
  auto buffer = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  uint8_t* base = buffer.data_ptr<uint8_t>();
  const auto header = packed_header(blocks, hp);
  std::copy(header.begin(), header.end(), reinterpret_cast<uintptr_t*>(base));
  place_packs(blocks, hp, heads, rows, base, true, &bytes);
  return buffer;
}

at::Tensor window_blocks_cpu(const at::Tensor& x_in, const at::Tensor& mods, at::TensorList prefix_qkv,
                             at::TensorList weights, at::ArrayRef<double> eps, int64_t heads,
                             c10::string_view gelu_approximate, int64_t chunk_rows, at::TensorList head_weights,
                             double head_eps, c10::string_view head_approximate, const c10::optional<at::Tensor>& goal,
                             const c10::optional<at::Tensor>& packed) {
  TORCH_CHECK(blas_gemm_available(), "window_blocks needs the BLAS sgemm_/dgemm_ exported by torch's CPU library");
  TORCH_CHECK_VALUE(x_in.dim() == 3, "x must be (M, S, D), got ", x_in.sizes());
  const int64_t m = x_in.size(0), s = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK_VALUE(weights.size() % 9 == 0 && !weights.empty(), "weights must hold 9 tensors per block, got ",
                    weights.size());
  const int64_t depth = static_cast<int64_t>(weights.size() / 9);
  TORCH_CHECK_VALUE(mods.dim() == 5 && mods.size(0) == m && mods.size(1) == s && mods.size(2) == depth &&
                        mods.size(3) == 6 && mods.size(4) == d && mods.stride(4) == 1,
                    "mods must be (M, S, depth, 6, D) = (", m, ", ", s, ", ", depth, ", 6, ", d,
                    ") with a contiguous last dimension, got ", mods.sizes(), " strides ", mods.strides());
  TORCH_CHECK_VALUE(prefix_qkv.empty() || static_cast<int64_t>(prefix_qkv.size()) == depth,
                    "prefix_qkv must be empty or hold one tensor per block");
  TORCH_CHECK_VALUE(chunk_rows >= 1, "chunk_rows must be >= 1");
  TORCH_CHECK_VALUE(m * s < std::numeric_limits<int>::max(), "M*S=", m * s, " rows exceed the BLAS int range");
  TORCH_CHECK_VALUE(mods.scalar_type() == x_in.scalar_type(), "mods must have x's dtype");
  const auto blocks = parse_blocks(weights, eps, d, heads, x_in.scalar_type());
  const int64_t inner = blocks[0].out_w.size(1);
  const at::Tensor x = x_in.contiguous();
  std::vector<at::Tensor> prefix;
  for (const auto& t : prefix_qkv) {
    prefix.push_back(t.contiguous());
    check_prefix(prefix.back(), x, m, 3 * inner);
    TORCH_CHECK_VALUE(prefix.back().size(1) == prefix[0].size(1) && prefix.back().size(0) == prefix[0].size(0),
                      "all prefix_qkv tensors must share (B, P)");
  }
  auto head = parse_head(head_weights, head_eps, head_approximate, d, x.scalar_type());
  if (head && goal.has_value()) {
    TORCH_CHECK_VALUE(goal->dim() == 2 && goal->size(1) == head->w2.size(0) && goal->size(0) >= 1 &&
                          m % goal->size(0) == 0 && goal->scalar_type() == x.scalar_type(),
                      "goal must be (B, ", head->w2.size(0), ") with B dividing M=", m, " and x's dtype, got ",
                      goal->sizes(), " ", goal->scalar_type());
    head->goal = goal->contiguous();
    head->rows_per_goal = m / goal->size(0);
  }
  TORCH_CHECK_VALUE(head || !goal.has_value(), "goal needs the head weights");
  const Head* hp = head ? &*head : nullptr;
  c10::optional<WindowPacks> packs;
  if (packed.has_value()) {
    TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, "packed weights are float32; x is ", x.scalar_type());
    TORCH_CHECK_VALUE(packed->scalar_type() == at::kByte && packed->dim() == 1 && packed->is_contiguous(),
                      "packed must be the uint8 buffer window_pack returns");
    int64_t bytes = 0;
    auto* base = static_cast<uint8_t*>(packed->data_ptr());
    const auto header = packed_header(blocks, hp);
    TORCH_CHECK_VALUE(packed->numel() >= header_bytes(header.size()) &&
                          std::equal(header.begin(), header.end(), reinterpret_cast<const uintptr_t*>(base)),
                      "packed was made from other weight tensors (or without this head): call window_pack again");
    const MklSingleThread single;  // the sizes window_pack laid the buffer out with
    packs = place_packs(blocks, hp, heads, 1, base, false, &bytes);
    TORCH_CHECK_VALUE(packed->numel() == bytes, "packed holds ", packed->numel(), " bytes; these weights need ", bytes);
  }
  auto out = !head ? at::empty({m, d}, x.options())
             : head->goal.defined() ? at::empty({m}, x.options())
                                    : at::empty({m, head->w2.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "window_blocks_cpu", [&] {
    blocks_all<scalar_t>(x, mods, blocks, prefix, heads, gelu_approximate, hp, packs ? &*packs : nullptr, chunk_rows,
                         out);
  });
  return out;
}

}  // namespace lewm_fast
