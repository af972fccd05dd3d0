"""The fused ops of the predictor rollout, one dispatch point for all of them.

``PredictorOps`` holds the plain-PyTorch implementations (the ``"reference"`` backend: any device; the oracle the
kernels are tested against), ``CpuOps`` (``"cpu"``) swaps in the C++ window attention (``csrc/window_attention.cpp``)
and the whole-window blocks (``csrc/window_blocks.cpp``), ``TritonOps`` (``"triton"``) the Triton kernels of
``kernels/``. The rollout schedule (``planning.fused_predictor.FusedRollout``) only ever calls these methods, so the
fast paths swap ops without forking the model. Shapes: rows are ``(M, S)`` = (candidate, window token); strided views
allowed on the first two axes, the feature axis must be contiguous.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .attention_grad import window_attention_grad


ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu")
"""The activations ``adaln_linear`` and ``linear_act`` fuse: none, GELU (erf), GELU's tanh approximation, SiLU."""
PRECISIONS = ("ieee", "tf32", "tf32x3")
"""Input precisions of float32 GEMM operands on the Triton backend (``TritonOps``)."""

WindowHead = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, str]
"""The folded prediction head for ``CpuOps.window_blocks``: (w1 (F, D), b1, w2 (D', F), b2, LN eps, GELU approximate)."""


def differentiating(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd records an op on ``tensors``: grad mode is on and one of them requires grad. The ops then
    run out of place (the in-place residual updates would overwrite what the backward needs)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    """``y`` through one of ``ACTIVATIONS``."""
    if activation == "none":
        return y
    if activation == "silu":
        return F.silu(y)
    return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")


def _row_view(t: torch.Tensor) -> Optional[torch.Tensor]:
    """t (M, S, N) as a (M * S, N) view (rows at one stride, contiguous along N: what a BLAS output can be), or
    None when its strides do not allow one."""
    if t.stride(-1) != 1:
        return None
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


class PredictorOps:
    """Plain-PyTorch ops (reference semantics; used on any device and as the fallback)."""

    def adaln_layernorm(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        mul: torch.Tensor,
        eps1: float,
        eps2: float,
        out_dtype: torch.dtype,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``LN2(LN1(x) * mul + shift)``: LN1 without affine (eps1), LN2 with optional affine (eps2).

        x, shift, mul (M, S, D) -> (M, S, D) contiguous in ``out_dtype``. ``mul`` is ``1 + scale`` of AdaLN.
        """
        d = x.shape[-1]
        h = torch.addcmul(shift, F.layer_norm(x, (d,), eps=eps1), mul)
        return F.layer_norm(h, (d,), weight, bias, eps2).to(out_dtype)

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(M, S, K) @ weight (N, K)^T + bias -> (M, S, N) contiguous (cuBLAS / MKL GEMM); written into ``out``
        ((M, S, N) whose rows are one strided 2-d view, e.g. contiguous or a (M, 1, N) slice) when given."""
        x2 = x.reshape(-1, x.shape[-1])
        if bias is not None and bias.dtype != x2.dtype:
            bias = bias.to(x2.dtype)
        y = None if out is None else _row_view(out)
        if bias is not None:
            y = torch.addmm(bias, x2, weight.t(), out=y)
        else:
            y = torch.mm(x2, weight.t(), out=y)
        return y.view(*x.shape[:-1], weight.shape[0])

    def adaln_linear(
        self,
        x: torch.Tensor,
        shift: Optional[torch.Tensor],
        mul: Optional[torch.Tensor],
        eps1: float,
        eps2: float,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        activation: str = "none",
        out: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        x_out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The pre-norm and the Linear after it: ``act(LN2(LN1(x) * mul + shift) @ weight^T + bias)``, or with shift /
        mul None ``act(LN1(x) @ weight^T + bias)``. x (M, S, D) -> (M, S, N) in weight's dtype, or written into
        ``out`` ((M, S, N), strided on M, S) and returned; activation one of ``ACTIVATIONS``.

        pos (S, D) with x_out (M, S, D): ``x + pos`` (the positional embedding of each window position) stands for x
        and is written into x_out (the blocks' residual stream). Inference only (no autograd through x_out)."""
        if pos is not None:
            x = torch.add(x, pos, out=x_out)
        if shift is None:
            h = F.layer_norm(x, (x.shape[-1],), eps=eps1).to(weight.dtype)
        else:
            h = self.adaln_layernorm(x, shift, mul, eps1, eps2, weight.dtype)
        if out is not None and activation == "none" and _row_view(out) is not None:
            return self.linear(h, weight, bias, out=out)  # the GEMM writes into out (a leading-dimension stride)
        y = self.linear(h, weight, bias)
        y = activate(y, activation)
        return y if out is None else out.copy_(y)

    def linear_act(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
        out_dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """``act(x @ weight^T + bias)``: x (M, S, K) in weight's dtype -> (M, S, N) contiguous in ``out_dtype``
        (default x's), the activation in x's dtype; one of ``ACTIVATIONS``. The action conditioning's two Linears."""
        y = activate(self.linear(x, weight, bias), activation)
        return y if out_dtype is None else y.to(out_dtype)

    def project_into(
        self, out: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``out = a @ weight^T + bias`` in out's dtype: a (M, S, K), out (M, S, N) strided on M, S (a slot of the
        rollout's latent buffer); returns out. Under autograd a new tensor (out untouched)."""
        y = self.linear(a, weight, bias).to(out.dtype)
        return y if differentiating(a) else out.copy_(y)

    def window_attention(
        self, qkv: torch.Tensor, heads: int, prefix_qkv: Optional[torch.Tensor] = None, num_queries: Optional[int] = None
    ) -> torch.Tensor:
        """Causal attention over a short window, straight from the ``to_qkv`` output layout.

        qkv (M, S, 3*heads*dh) laid out ``[q | k | v]`` with heads-major inner layout; prefix_qkv (B, P, 3*heads*dh)
        (or None) holds P window tokens shared by each group of M // B consecutive rows, placed before the S own
        tokens. Own token i (window position P+i) attends to window positions <= P+i, scale dh**-0.5.
        Returns the last ``num_queries`` (default S) own tokens: (M, num_queries, heads*dh), heads-major.
        """
        m, s, width = qkv.shape
        inner = width // 3
        dh = inner // heads
        nq = s if num_queries is None else num_queries
        q = qkv[:, s - nq:, :inner].unflatten(-1, (heads, dh)).transpose(1, 2)
        k = qkv[:, :, inner:2 * inner]
        v = qkv[:, :, 2 * inner:]
        p = 0
        if prefix_qkv is not None:
            b, p = prefix_qkv.shape[:2]
            rep = m // b
            k = torch.cat([prefix_qkv[:, :, inner:2 * inner].repeat_interleave(rep, 0), k], dim=1)
            v = torch.cat([prefix_qkv[:, :, 2 * inner:].repeat_interleave(rep, 0), v], dim=1)
        k = k.unflatten(-1, (heads, dh)).transpose(1, 2)
        v = v.unflatten(-1, (heads, dh)).transpose(1, 2)
        keys = p + s
        qpos = torch.arange(keys - nq, keys, device=qkv.device)
        mask = torch.arange(keys, device=qkv.device)[None, :] <= qpos[:, None]
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.transpose(1, 2).reshape(m, nq, inner).to(qkv.dtype)

    def gated_residual(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        gate: torch.Tensor,
    ) -> torch.Tensor:
        """In place ``x += gate * (a @ weight^T + bias)`` (``weight`` None: ``x += gate * a``). x, gate (M, S, D).
        Returns x, or when ``differentiating`` the sum as a new tensor (x untouched)."""
        y = a if weight is None else self.linear(a, weight, bias)
        if differentiating(x, a, gate):
            return torch.addcmul(x, gate, y.to(x.dtype))
        return x.addcmul_(gate, y.to(x.dtype))

    def attention_residual(
        self,
        x: torch.Tensor,
        qkv: torch.Tensor,
        heads: int,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        gate: torch.Tensor,
        prefix_qkv: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attention and ``attn.to_out`` with the gated residual: in place ``x += gate * (window_attention(qkv, heads,
        prefix_qkv, NQ) @ weight^T + bias)`` for x, gate (M, NQ, D), the last NQ own tokens of qkv (M, S, ·)."""
        return self.gated_residual(x, self.window_attention(qkv, heads, prefix_qkv, x.shape[1]), weight, bias, gate)

    def goal_cost(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], goal: torch.Tensor
    ) -> torch.Tensor:
        """Last projection fused with the planning cost: hidden (M, K), weight (D, K), goal (B, D) ->
        ``sum_d (hidden @ weight^T + bias - goal[m // (M // B)])^2`` as (M,) float32."""
        y = self.linear(hidden, weight, bias).float()
        b = goal.shape[0]
        return (y.view(b, -1, y.shape[-1]) - goal.float().unsqueeze(1)).square().sum(-1).reshape(-1)


class CpuOps(PredictorOps):
    """PyTorch ops with the C++ extension's window attention (CPU tensors, float32), and ``window_blocks``: all blocks
    of a rollout step in one C++ call, candidates chunked so each core keeps a chunk's activations in its cache."""

    chunk_rows = 960  # window rows per chunk (at least one chunk per thread); column blocking keeps them in L2

    def window_attention(self, qkv, heads, prefix_qkv=None, num_queries=None):
        if differentiating(qkv):  # C++ forward and backward (csrc/window_attention_backward.cpp)
            return window_attention_grad(qkv, heads, prefix_qkv, num_queries, self._window_attention_forward,
                                         self._window_attention_backward)
        return self._window_attention_forward(qkv, heads, prefix_qkv, num_queries)

    @staticmethod
    def _window_attention_forward(qkv, heads, prefix_qkv=None, num_queries=None):
        nq = qkv.shape[1] if num_queries is None else num_queries
        return torch.ops.lewm_fast.window_attention(qkv, prefix_qkv, heads, nq)

    @staticmethod
    def _window_attention_backward(grad_out, qkv, heads, prefix_qkv, num_queries):
        return torch.ops.lewm_fast.window_attention_backward(grad_out, qkv, prefix_qkv, heads)

    @staticmethod
    def window_blocks_available() -> bool:
        """Whether ``window_blocks`` can run: it calls the BLAS gemm that torch's CPU library exports (MKL/OpenBLAS
        builds do); without it the rollout runs op by op on these ops."""
        return bool(torch.ops.lewm_fast.window_blas_available())

    def window_pack(
        self, weights: List[torch.Tensor], heads: int, head: Optional[WindowHead] = None
    ) -> Optional[torch.Tensor]:
        """The weight blocks of ``window_blocks``' GEMMs packed once by MKL (float32, where torch's MKL exports its
        packed-GEMM API), as an opaque uint8 buffer for ``window_blocks(packed=...)``; None where packing does not
        apply. Valid for these very weight tensors (re-pack after changing them); do not copy the buffer."""
        if weights[0].dtype != torch.float32 or not torch.ops.lewm_fast.window_packing_available():
            return None
        head_weights = [] if head is None else list(head[:4])
        rows = self.chunk_rows // 2  # MKL's row hint: a chunk's rows on this 2-core target (any row count may use it)
        return torch.ops.lewm_fast.window_pack(weights, heads, head_weights, rows)

    def window_blocks(
        self,
        x: torch.Tensor,
        mods: torch.Tensor,
        prefix_qkv: Optional[List[torch.Tensor]],
        weights: List[torch.Tensor],
        eps: List[float],
        heads: int,
        gelu_approximate: str,
        head: Optional[WindowHead] = None,
        goal: Optional[torch.Tensor] = None,
        packed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (M, S, D), mods (M, S, depth, 6, D); weights / eps: 9 tensors / 4 floats per block (see
        ``csrc/window_blocks.cpp``). Without ``head``: the residual stream of the last token after all blocks
        (M, 1, D). With ``head``: the predicted latents (M, D'), or with ``goal`` (B, D') the costs (M,).
        ``packed``: ``window_pack(weights, heads, head)`` of these weights and head, or None."""
        head_weights, head_eps, head_approximate = ([], 0.0, "none") if head is None else (list(head[:4]), *head[4:])
        out = torch.ops.lewm_fast.window_blocks(
            x, mods, prefix_qkv or [], weights, eps, heads, gelu_approximate, self.chunk_rows,
            head_weights, head_eps, head_approximate, goal, packed,
        )
        return out if head is not None else out.unsqueeze(1)


class TritonOps(PredictorOps):
    """Triton kernels (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``): each pre-norm fused into the GEMM after
    it (with the MLP's GELU) at one environment's sizes, attention fused into ``to_out`` with its gated residual, the
    gated residual into ``mlp``'s last GEMM, the goal cost into the head's last GEMM. ``precision``: the ``tl.dot``
    input precision of float32 operands, ``"ieee"`` (exact, the parity mode), ``"tf32"`` or ``"tf32x3"`` (tensor
    cores); bf16 operands always use tensor cores. ``linear`` (the modulations' GEMM, the head's first Linear without
    GELU) stays on cuBLAS, except float32 operands with a tensor-core precision, which take the Triton projection
    kernel at that precision (cuBLAS would multiply them in exact fp32 unless TF32 were switched on globally). The
    action conditioning's two folded Linears (``linear_act``) are projection kernels with their SiLUs as epilogues.
    Under autograd (``differentiating``) the window
    attention and the gated GEMMs (``gated_residual``, attention_residual's projection) keep Triton forwards, with
    Triton backward kernels (input gradients only: weights are frozen); the other ops run as ``PredictorOps`` (cuBLAS
    GEMMs and torch ops; each Linear's backward is one GEMM ``grad_out @ W``)."""

    def __init__(self, precision: str = "ieee"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision

    def _project(self, x, weight, bias, precision, activation="none", out=None, out_dtype=None):
        """``act(x @ weight^T + bias)`` through the projection kernel into ``out`` (x's leading shape; fresh in
        ``out_dtype`` or x's dtype when None), returned; x and out have one or two leading dimensions."""
        from ..kernels.gated_residual import project_into

        if out is None:
            out = torch.empty(*x.shape[:-1], weight.shape[0], device=x.device, dtype=out_dtype or x.dtype)
        rows = out if out.dim() == 3 else out.view(-1, 1, out.shape[-1])
        project_into(rows, x.reshape(rows.shape[0], rows.shape[1], -1), weight, bias, precision, activation)
        return out

    def linear(self, x, weight, bias, out=None):
        if self.precision == "ieee" or x.dtype != torch.float32 or differentiating(x):
            return super().linear(x, weight, bias, out)
        return self._project(x, weight, bias, self.precision, out=out)

    def adaln_layernorm(self, x, shift, mul, eps1, eps2, out_dtype, weight=None, bias=None):
        if differentiating(x, shift, mul):
            return super().adaln_layernorm(x, shift, mul, eps1, eps2, out_dtype, weight, bias)
        from ..kernels.adaln_layernorm import adaln_layernorm

        return adaln_layernorm(x, shift, mul, eps1, eps2, out_dtype=out_dtype, weight=weight, bias=bias)

    def adaln_linear(self, x, shift, mul, eps1, eps2, weight, bias, activation="none", out=None, pos=None,
                     x_out=None):
        """One fused kernel up to ``kernels.adaln_linear.MAX_ROWS`` rows (the latency case) and, with 16-bit weights
        on GPUs with room for its 64-row panels, above (``fused_fits``), with the ``x + pos`` of ``pos`` / ``x_out``
        in its prologue; else the add, the pre-norm kernel, a cuBLAS GEMM and the activation (cuBLAS' large tiles
        read the weight far fewer times than 16-row panels)."""
        from ..kernels import adaln_linear as fused

        fits = fused.fused_fits(x.shape[0] * x.shape[1], weight.shape[0], x.shape[-1], weight.dtype, x.device)
        if differentiating(x, shift, mul):
            return super().adaln_linear(x, shift, mul, eps1, eps2, weight, bias, activation, out, pos, x_out)
        if fits:
            return fused.adaln_linear(x, shift, mul, eps1, eps2, weight, bias, activation, self.precision, out, pos,
                                      x_out)
        if pos is not None:
            x = torch.add(x, pos, out=x_out)
        if activation == "none":
            return super().adaln_linear(x, shift, mul, eps1, eps2, weight, bias, activation, out)
        # many rows with a GELU: the pre-norm kernel, then the GEMM with the GELU as its epilogue (the GEMM's output
        # is written once, in the weight's dtype, instead of written, read and written again by a GELU kernel)
        if shift is None:
            h = F.layer_norm(x, (x.shape[-1],), eps=eps1).to(weight.dtype)
        else:
            h = self.adaln_layernorm(x, shift, mul, eps1, eps2, weight.dtype)
        return self._project(h, weight, bias, self.precision, activation, out)

    def linear_act(self, x, weight, bias, activation, out_dtype=None):
        """One projection kernel (the activation and the output cast as its epilogue) in place of a GEMM, a bias
        add, the activation and a cast. float32 operands whose result is stored in 16 bits (a bf16 plan's action
        conditioning) take 3xTF32 tensor-core dots where the precision is ``"ieee"``: about 1e-6 relative error, far
        below the store's rounding, at a fraction of the FMA units' time."""
        if differentiating(x):
            return super().linear_act(x, weight, bias, activation, out_dtype)
        out_dtype = out_dtype or x.dtype
        precision = "tf32x3" if self.precision == "ieee" and out_dtype.itemsize == 2 else self.precision
        return self._project(x, weight, bias, precision, activation, out_dtype=out_dtype)

    def project_into(self, out, a, weight, bias):
        if differentiating(a):
            return super().project_into(out, a, weight, bias)
        from ..kernels.gated_residual import project_into

        return project_into(out, a, weight, bias, self.precision)

    def window_attention(self, qkv, heads, prefix_qkv=None, num_queries=None):
        if differentiating(qkv):  # Triton forward and backward (kernels/window_attention_backward.py)
            return window_attention_grad(qkv, heads, prefix_qkv, num_queries, self._window_attention_forward,
                                         self._window_attention_backward)
        return self._window_attention_forward(qkv, heads, prefix_qkv, num_queries)

    @staticmethod
    def _window_attention_forward(qkv, heads, prefix_qkv=None, num_queries=None):
        from ..kernels.window_attention import window_attention

        return window_attention(qkv, heads, prefix_qkv=prefix_qkv, num_queries=num_queries)

    @staticmethod
    def _window_attention_backward(grad_out, qkv, heads, prefix_qkv, num_queries):
        from ..kernels.window_attention_backward import window_attention_backward

        return window_attention_backward(grad_out, qkv, heads, prefix_qkv, num_queries)

    def attention_residual(self, x, qkv, heads, weight, bias, gate, prefix_qkv=None):
        if differentiating(x, qkv, gate):  # the Triton window attention, then the differentiable gated GEMM below
            return super().attention_residual(x, qkv, heads, weight, bias, gate, prefix_qkv)
        from ..kernels.attention_residual import attention_residual

        return attention_residual(x, qkv, heads, weight, bias, gate, prefix_qkv, self.precision)

    def gated_residual(self, x, a, weight, bias, gate):
        if differentiating(x, a, gate):  # Triton forward and backward (kernels/gated_residual_backward.py)
            if weight is None or differentiating(weight, bias):  # Identity, or weights that want a gradient: torch
                return super().gated_residual(x, a, weight, bias, gate)
            from ..kernels.gated_residual_backward import gated_residual_grad

            return gated_residual_grad(x, a, weight, bias, gate, self.precision)
        from ..kernels.gated_residual import gated_residual

        return gated_residual(x, a, weight, bias, gate, self.precision)

    def goal_cost(self, hidden, weight, bias, goal):
        if differentiating(hidden):
            return super().goal_cost(hidden, weight, bias, goal)
        from ..kernels.goal_cost import goal_cost

        return goal_cost(hidden, weight, bias, goal, self.precision)


def make_ops(backend: str, precision: str = "ieee") -> PredictorOps:
    """Ops for a resolved backend: ``"triton"`` (with ``precision``), ``"cpu"`` or ``"reference"`` (plain PyTorch;
    both exact float32)."""
    if backend == "triton":
        return TritonOps(precision)
    return {"cpu": CpuOps, "reference": PredictorOps}[backend]()
