"""``RolloutEngine``: candidate rollouts and CEM costs of a LeWM through the fused predictor paths.

Backends (``backend=``): ``"triton"`` (Triton kernels + cuBLAS GEMMs; CUDA, or CPU under ``TRITON_INTERPRET=1``),
``"cpu"`` (PyTorch + the C++ window ops of ``lewm_fast._C``), ``"reference"`` (the model's own ``rollout``, the
oracle) and ``"auto"``: Triton on CUDA, the CPU path on CPU; where neither kernel library is available it resolves to
``"reference"`` too, but runs the fused schedule on the plain-PyTorch ops (``ops.predictor.PredictorOps``). The old
name ``"torch"`` is taken as ``"reference"``, with a DeprecationWarning.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional

import torch
from torch import nn

from .._validation import check_tensor
from ..backends import resolve_backend
from ..ops.predictor import PRECISIONS, make_ops
from ..reference.cem import goal_mse_cost
from ..reference.lewm import LeWM
from .fused_predictor import FusedRollout, PlanContext

DTYPES = (None, torch.float32, torch.bfloat16)


def _grad_scope(candidates: torch.Tensor):
    """``torch.no_grad()`` unless grad mode is on and ``candidates`` requires grad: then a no-op context, and what
    runs inside is differentiable with respect to ``candidates`` (only: the weights are constants)."""
    if torch.is_grad_enabled() and candidates.requires_grad:
        return contextlib.nullcontext()
    return torch.no_grad()


class _FrozenRollout(nn.Module):
    """``LeWM.rollout`` as a module's forward, for ``torch.func.functional_call`` with detached weights: autograd
    then reaches the candidates but never the parameters (no ``.grad`` is written to the model)."""

    def __init__(self, model: LeWM):
        super().__init__()
        self.model = model

    def forward(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.model.rollout(emb_ctx, action_history, candidates)

    def frozen(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (emb_ctx, action_history, candidates))


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.predictor.parameters()).device
    except StopIteration as exc:
        raise ValueError("model.predictor has no parameters") from exc


class RolloutEngine:
    """Fast candidate rollouts / CEM costs of ``model`` (a LeWM, or any module with stable-worldmodel's ``predictor``,
    ``action_encoder`` and ``pred_proj``). Inference semantics: dropout off, BatchNorm running statistics.
    ``costs`` / ``paired_costs`` / ``rollout`` are differentiable with respect to the candidate actions (grad mode on
    and ``candidates.requires_grad``; for gradient planners); weight gradients are not provided (the weights are
    constants of the backward).

    dtype None / float32: float32 everywhere (parity with the reference). bfloat16: bf16 weights and GEMM/attention
    inputs with float32 accumulation, float32 residual stream, LayerNorm statistics and costs (Triton backend only).
    precision (float32 on the Triton backend): how the fused kernels' GEMMs multiply float32 operands: ``"ieee"``
    (exact, the default and the parity mode), ``"tf32"`` (tensor cores, operands cut to TF32's 10-bit mantissa) or
    ``"tf32x3"`` (tensor cores, error-compensated, about float32 accuracy). The C++ and reference paths are exact
    float32.
    The engine re-folds its weights when a parameter of ``model`` changes; after changing weights in place, call
    ``refresh()`` before replaying a captured CUDA graph (replays do not run the check). On CPU the engine reuses a
    work buffer across calls: use one engine per thread.
    """

    def __init__(self, model: nn.Module, backend: str = "auto", dtype: Optional[torch.dtype] = None,
                 precision: str = "ieee"):
        for name in ("predictor", "action_encoder", "pred_proj"):
            if not isinstance(getattr(model, name, None), nn.Module):
                raise TypeError(f"model must have a '{name}' submodule (a LeWM), got {type(model).__name__}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be None, torch.float32 or torch.bfloat16, got {dtype}")
        self.model = model
        # the reference path needs lewm_fast's tensor API (rollout(ctx, hist, candidates)); another library's LeWM (e.g.
        # stable-worldmodel's, whose rollout takes an info dict) is viewed through a lewm_fast LeWM sharing its modules
        self.reference_model = model if isinstance(model, LeWM) else LeWM(
            getattr(model, "encoder", nn.Identity()), model.predictor, model.action_encoder, getattr(model, "projector", None),
            model.pred_proj)
        self._frozen_reference = _FrozenRollout(self.reference_model)
        self.device = _model_device(model)
        if backend == "torch":  # the engine's old name of its plain-PyTorch path
            warnings.warn("RolloutEngine backend 'torch' is deprecated: use 'reference'", DeprecationWarning,
                          stacklevel=2)
            backend = "reference"
        self.backend = resolve_backend(backend, self.device)
        self.dtype = dtype or torch.float32
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "ieee" and self.backend != "triton":
            raise ValueError(f"precision={precision!r} needs the Triton backend (CUDA); backend {backend!r} resolved to "
                             f"{self.backend!r} on {self.device}, which computes exact float32: pass precision='ieee'")
        self.precision = precision
        if self.dtype == torch.bfloat16 and self.backend != "triton":
            raise ValueError(
                f"dtype=torch.bfloat16 needs the Triton backend (CUDA); backend {backend!r} resolved to "
                f"{self.backend!r} on {self.device}, which computes in float32: pass dtype=None"
            )
        if getattr(model, "training", False):
            warnings.warn(
                "RolloutEngine computes the model in inference mode (no dropout, BatchNorm running statistics), but "
                "the model is in training mode; call model.eval() for the reference to match",
                stacklevel=2,
            )
        # an explicit "reference" runs the oracle; "auto" falling back to "reference" runs the fused schedule on it
        oracle = backend == "reference"
        self.fused = None if oracle else FusedRollout(model, make_ops(self.backend, precision), self.dtype)

    @property
    def latent_dim(self) -> int:
        return int(self.model.predictor.pos_embedding.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.model.action_encoder.patch_embed.in_channels)

    def refresh(self) -> None:
        """Re-fold the weights from the model now (in place: captured CUDA graphs see the new values)."""
        if self.fused is not None:
            self.fused.packed.pack()

    # ------------------------------------------------------------------ validation (host-side only: no sync)
    def _check(self, emb_ctx, action_history, candidates=None, goal_emb=None):
        d, a = self.latent_dim, self.action_dim
        check_tensor(emb_ctx, "emb_ctx", ndim=3, last_dim=d)
        check_tensor(action_history, "action_history", ndim=3, last_dim=a, nonempty=False)
        b, h = emb_ctx.shape[:2]
        if tuple(action_history.shape[:2]) != (b, h - 1):
            raise ValueError(
                f"action_history must have shape (B={b}, H-1={h - 1}, {a}) for emb_ctx {tuple(emb_ctx.shape)}, "
                f"got {tuple(action_history.shape)}"
            )
        tensors = {"emb_ctx": emb_ctx, "action_history": action_history}
        if candidates is not None:
            check_tensor(candidates, "candidates", ndim=4, last_dim=a)
            if candidates.shape[0] != b:
                raise ValueError(f"candidates (B,N,T,A) must have B={b} like emb_ctx, got {tuple(candidates.shape)}")
            tensors["candidates"] = candidates
        if goal_emb is not None:
            check_tensor(goal_emb, "goal_emb", ndim=2, last_dim=d)
            if goal_emb.shape[0] != b:
                raise ValueError(f"goal_emb must have shape (B={b}, {d}), got {tuple(goal_emb.shape)}")
            tensors["goal_emb"] = goal_emb
        for name, t in tensors.items():
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device} but the model is on {self.device}")

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def prepare(self, emb_ctx: torch.Tensor, action_history: torch.Tensor) -> Optional[PlanContext]:
        """Precompute what depends on the context only (the keys/values of the window tokens all candidates share),
        for reuse by every CEM iteration of a plan: pass it as ``context=`` to ``costs`` / ``rollout`` with the same
        (unmodified) tensors. None for the reference backend (nothing to precompute)."""
        self._check(emb_ctx, action_history)
        return None if self.fused is None else self.fused.context(emb_ctx, action_history)

    def costs(
        self,
        emb_ctx: torch.Tensor,
        action_history: torch.Tensor,
        goal_emb: torch.Tensor,
        candidates: torch.Tensor,
        context: Optional[PlanContext] = None,
    ) -> torch.Tensor:
        """emb_ctx (B,H,D), action_history (B,H-1,A), goal_emb (B,D), candidates (B,N,T,A) -> costs (B,N) float32:
        ``||last rolled-out latent - goal||^2`` summed over D, as the reference ``CEMSolver.costs`` (same context for
        all N candidates). Non-finite candidates give non-finite costs (no check: that would sync the device).
        ``context``: ``prepare(emb_ctx, action_history)``, to skip recomputing it. Graph-capturable on CUDA.

        Differentiable with respect to ``candidates`` when grad mode is on and ``candidates.requires_grad`` (for
        gradient planners); the weights are constants: no gradient reaches the model's parameters, emb_ctx,
        action_history or goal_emb. Otherwise it runs under ``torch.no_grad``."""
        self._check(emb_ctx, action_history, candidates, goal_emb)
        with _grad_scope(candidates):
            if self.fused is None:
                lat = self.rollout(emb_ctx, action_history, candidates)[:, :, -1]
                return goal_mse_cost(lat, goal_emb.detach()).float()
            return self.fused.run(emb_ctx, action_history, candidates, goal_emb, context)

    def paired_costs(self, emb_ctx: torch.Tensor, goal_emb: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """stable-worldmodel's pairing (its ``LeWM.get_cost``): emb_ctx (B,H,D), goal_emb (B,D), candidates (B,N,T,A)
        with T >= H -> costs (B,N) float32. Candidate blocks 0..H-1 ride with the H context frames (no action
        history) and T - H + 1 latents are rolled out; at H = 1 this is ``costs`` with an empty history. No window
        token is shared by all candidates, so there is nothing to ``prepare``, and no per-candidate context is built:
        the candidates' windows are rolled out as in ``costs``. Graph-capturable on CUDA. Differentiable with respect
        to ``candidates`` (only) as ``costs``."""
        check_tensor(emb_ctx, "emb_ctx", ndim=3, last_dim=self.latent_dim)
        check_tensor(candidates, "candidates", ndim=4, last_dim=self.action_dim)
        b, h = emb_ctx.shape[:2]
        if candidates.shape[0] != b or candidates.shape[2] < h:
            raise ValueError(f"candidates must have shape (B={b}, N, T>={h}, {self.action_dim}) for emb_ctx "
                             f"{tuple(emb_ctx.shape)} (blocks 0..H-1 ride with the context), got {tuple(candidates.shape)}")
        self._check(emb_ctx, candidates[:, 0, : h - 1], candidates, goal_emb)  # the history argument only stands in
        with _grad_scope(candidates):
            if self.fused is None:
                ctx = emb_ctx.detach().unsqueeze(1).expand(b, candidates.shape[1], *emb_ctx.shape[1:])
                lat = self._reference_rollout(ctx, candidates[:, :, : h - 1], candidates[:, :, h - 1:])
                return goal_mse_cost(lat[:, :, -1], goal_emb.detach()).float()
            return self.fused.run(emb_ctx, None, candidates, goal_emb, paired=True)

    def rollout(
        self,
        emb_ctx: torch.Tensor,
        action_history: torch.Tensor,
        candidates: torch.Tensor,
        context: Optional[PlanContext] = None,
    ) -> torch.Tensor:
        """emb_ctx (B,H,D), action_history (B,H-1,A), candidates (B,N,T,A) -> latents (B,N,H+T,D) float32, as
        ``LeWM.rollout`` with the context expanded over the N candidates; the first H latents are the context.
        Differentiable with respect to ``candidates`` (only) as ``costs``."""
        self._check(emb_ctx, action_history, candidates)
        with _grad_scope(candidates):
            if self.fused is None:
                b, n = candidates.shape[:2]
                ctx = emb_ctx.detach().unsqueeze(1).expand(b, n, *emb_ctx.shape[1:])
                hist = action_history.detach().unsqueeze(1).expand(b, n, *action_history.shape[1:])
                return self._reference_rollout(ctx, hist, candidates).float()
            return self.fused.run(emb_ctx, action_history, candidates, context=context)

    def _reference_rollout(self, emb_ctx: torch.Tensor, action_history: torch.Tensor,
                           candidates: torch.Tensor) -> torch.Tensor:
        """The oracle's rollout; with grad (of the candidates) wanted, through detached weights."""
        if not torch.is_grad_enabled():
            return self.reference_model.rollout(emb_ctx, action_history, candidates)
        return self._frozen_reference.frozen(emb_ctx, action_history, candidates)

    @torch.no_grad()
    def predict(self, emb: torch.Tensor, act_emb: torch.Tensor) -> torch.Tensor:
        """``LeWM.predict``: emb, act_emb (B,T,D), T <= the predictor's window -> next latents (B,T,D) float32."""
        d = self.latent_dim
        check_tensor(emb, "emb", ndim=3, last_dim=d)
        check_tensor(act_emb, "act_emb", ndim=3, last_dim=d)
        if emb.shape[:2] != act_emb.shape[:2]:
            raise ValueError(f"emb and act_emb must share (B,T), got {tuple(emb.shape)} and {tuple(act_emb.shape)}")
        window = int(self.model.predictor.pos_embedding.shape[1])
        if emb.shape[1] > window:
            raise ValueError(f"predictor window has {emb.shape[1]} frames but the model was built for at most {window}")
        if self.fused is None:
            b, t, _ = emb.shape
            out = self.model.predictor(emb, act_emb)
            return self.model.pred_proj(out.reshape(b * t, -1)).view(b, t, -1).float()
        return self.fused.predict(emb, act_emb)
