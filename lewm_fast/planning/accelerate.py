"""``accelerate(model)``: the same LeWM (shared parameters, same state-dict keys) with ``predict`` and ``rollout``
running on the fused ``RolloutEngine`` whenever no gradient is needed."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from .._validation import check_tensor
from ..backends import resolve_backend
from ..reference.lewm import LeWM
from .rollout import DTYPES, RolloutEngine

_PARTS = ("encoder", "predictor", "action_encoder", "pred_proj")


class AcceleratedLeWM(LeWM):
    """A LeWM sharing ``model``'s submodules whose ``predict`` / ``rollout`` use the fused engine in inference
    (eval mode, and no gradient wanted); in training mode or when autograd needs the graph they are the reference's."""

    def __init__(self, model: nn.Module, backend: str = "auto", dtype: Optional[torch.dtype] = None):
        missing = [name for name in _PARTS if not isinstance(getattr(model, name, None), nn.Module)]
        if missing:
            raise TypeError(
                f"accelerate() needs a LeWM-like module with submodules {list(_PARTS)} (+ optional projector); "
                f"{type(model).__name__} lacks {missing}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be None, torch.float32 or torch.bfloat16, got {dtype}")
        super().__init__(model.encoder, model.predictor, model.action_encoder, getattr(model, "projector", None), model.pred_proj)
        self.config = copy.deepcopy(getattr(model, "config", None))
        self.train(model.training)
        self.backend = backend
        self.dtype = dtype
        resolve_backend(backend, next(model.predictor.parameters()).device)  # fail early on an impossible backend
        self._engine: Optional[RolloutEngine] = None

    @property
    def engine(self) -> RolloutEngine:
        """The fused engine on the model's current device (rebuilt after ``.to(device)``)."""
        device = next(self.predictor.parameters()).device
        if self._engine is None or self._engine.device != device:
            try:
                self._engine = RolloutEngine(self, backend=self.backend, dtype=self.dtype)
            except AttributeError as exc:  # inside a property nn.Module would report "no attribute 'engine'" instead
                raise TypeError(f"cannot build the fused engine for this model: {exc}") from exc
        return self._engine

    def _fast(self, *inputs: torch.Tensor) -> bool:
        if self.training:
            return False
        if not torch.is_grad_enabled():
            return True
        params = (p for m in (self.predictor, self.pred_proj, self.action_encoder) for p in m.parameters())
        return not any(t.requires_grad for t in inputs) and not any(p.requires_grad for p in params)

    def _predict(self, emb: torch.Tensor, act_emb: torch.Tensor) -> torch.Tensor:
        if self._fast(emb, act_emb):
            return self.engine.predict(emb, act_emb).to(emb.dtype)
        return super()._predict(emb, act_emb)

    def rollout(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        if not self._fast(emb_ctx, action_history, candidates):
            return super().rollout(emb_ctx, action_history, candidates)
        check_tensor(emb_ctx, "emb_ctx", ndim=4, last_dim=self.latent_dim)
        check_tensor(candidates, "candidates", ndim=4, last_dim=self.action_dim, finite=True)
        check_tensor(action_history, "action_history", ndim=4, last_dim=self.action_dim, finite=True, nonempty=False)
        b, s = emb_ctx.shape[:2]
        if candidates.shape[:2] != (b, s) or action_history.shape[:2] != (b, s):
            raise ValueError(
                f"emb_ctx, action_history and candidates must share (B,S)={(b, s)}, got "
                f"{tuple(action_history.shape)} and {tuple(candidates.shape)}"
            )
        # every sample has its own context: B*S environments of one candidate each
        out = self.engine.rollout(emb_ctx.flatten(0, 1), action_history.flatten(0, 1), candidates.flatten(0, 1).unsqueeze(1))
        return out.view(b, s, *out.shape[2:]).to(emb_ctx.dtype)


def accelerate(model: nn.Module, backend: str = "auto", dtype: Optional[torch.dtype] = None) -> AcceleratedLeWM:
    """Wrap a LeWM (lewm_fast's, or stable-worldmodel's: any module with encoder / predictor / action_encoder /
    projector / pred_proj of that structure) so that ``predict`` and ``rollout`` run on the fused engine.

    Parameters are shared (not copied) and the state-dict keys are unchanged. ``backend``: "auto" | "triton" | "cpu" |
    "reference"; ``dtype``: None (float32) or torch.bfloat16 (Triton only). The engine itself is ``.engine``.
    """
    return AcceleratedLeWM(model, backend=backend, dtype=dtype)
