"""Amortized planning with a goal-conditioned inverse-dynamics model (GC-IDM, arXiv 2605.08732) on frozen LeWM latents.

``IDMPolicy``: one IDM forward pass per decision, B environments at once, the same ``act``/``reset``/``reseed``
interface as the sampling planners. ``IDMInit``: the IDM's rollout in latent space (IDM -> action block -> predictor ->
next latent -> IDM ...), the initial mean ``CEMPlanner(init=IDMInit(...))`` refines (preset ``idm_cem``).
Both return the model's normalised action blocks; the run's action statistics (``ActionCodec``) map them to the env.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_positive_int, check_tensor
from ..reference.cem import check_action_inputs, prepare_inputs
from ..reference.idm import GCIDM
from ..reference.lewm import LeWM

REMAINING = ("countdown", "fixed")


def _check_idm(model: LeWM, idm: GCIDM) -> None:
    if (idm.latent_dim, idm.action_dim) != (model.latent_dim, model.action_dim):
        raise ValueError(f"the IDM maps {idm.latent_dim}-d latents to {idm.action_dim}-wide action blocks but the model "
                         f"has {model.latent_dim}-d latents and {model.action_dim}-wide blocks")


@torch.no_grad()
def idm_rollout(model: LeWM, idm: GCIDM, emb_ctx: torch.Tensor, action_history: torch.Tensor, goal_emb: torch.Tensor,
                steps: int, remaining: torch.Tensor) -> torch.Tensor:
    """The IDM's plan of ``steps`` blocks in latent space: block i = IDM(z_i, goal, max(remaining - i, 1) / K), z_0 the
    last context latent, z_{i+1} the predictor's next latent after block i (``LeWM.rollout``).

    emb_ctx (B,H,D), action_history (B,H-1,A), goal_emb (B,D), remaining (B,) frames to the goal -> (B, steps, A)
    float32 normalised action blocks.
    """
    check_positive_int(steps, "steps")
    check_tensor(remaining, "remaining", ndim=1, floating=False)
    k_max = float(idm.horizon)
    blocks = []
    z = emb_ctx[:, -1]
    for i in range(steps):
        k = (remaining - i).clamp(min=1).to(z.dtype)
        blocks.append(idm(z, goal_emb, k / k_max).float())
        if i + 1 < steps:
            plan = torch.stack(blocks, dim=1).to(emb_ctx.dtype)
            z = model.rollout(emb_ctx.unsqueeze(1), action_history.unsqueeze(1).to(emb_ctx.dtype), plan.unsqueeze(1))[:, 0, -1]
    return torch.stack(blocks, dim=1)


class IDMInit:
    """``init(emb_ctx, action_history, goal_emb) -> (B, horizon, A)``: the IDM's latent rollout with the goal
    ``idm.horizon`` frames ahead (CEM's horizon-long plan is meant to reach the goal at its end)."""

    def __init__(self, model: LeWM, idm: GCIDM, horizon: int):
        _check_idm(model, idm)
        self.model, self.idm, self.horizon = model, idm, check_positive_int(horizon, "horizon")

    def __call__(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, goal_emb: torch.Tensor) -> torch.Tensor:
        remaining = torch.full((emb_ctx.shape[0],), self.idm.horizon, dtype=torch.long, device=emb_ctx.device)
        return idm_rollout(self.model, self.idm, emb_ctx, action_history, goal_emb, self.horizon, remaining)


class IDMPolicy:
    """Goal-reaching with one GC-IDM forward pass per action block, B environments at once.

    ``act(obs (B,H,3,h,w), goal (B,3,h,w), action_history (B,H-1,A))`` encodes context and goal with the frozen
    encoder and returns ``receding_horizon`` normalised blocks (B, receding_horizon, A): block 0 from the IDM, further
    ones from its rollout in latent space (``idm_rollout``). ``remaining``: "countdown" feeds k = K minus the blocks
    returned since ``reset`` (at least 1: the eval's goal is K frames ahead at the start), "fixed" always k = K.
    Deterministic: ``reseed`` does nothing.
    """

    which = "reference"  # plain PyTorch (the IDM and the model's own encoder / predictor), no fused backend

    def __init__(self, model: LeWM, idm: GCIDM, receding_horizon: int = 1, remaining: str = "countdown"):
        _check_idm(model, idm)
        if remaining not in REMAINING:
            raise ValueError(f"remaining must be one of {REMAINING}, got {remaining!r}")
        self.model, self.idm = model, idm
        self.receding_horizon = check_positive_int(receding_horizon, "receding_horizon")
        self.remaining = remaining
        self._done: Optional[torch.Tensor] = None  # (B,) blocks returned since reset, per env

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def act(self, obs: torch.Tensor, goal: torch.Tensor, action_history: Optional[torch.Tensor] = None,
            latent: bool = False) -> torch.Tensor:
        """One decision for B envs -> (B, receding_horizon, A) normalised action blocks (float32)."""
        emb_ctx, goal_emb = prepare_inputs(self.model, obs, goal, latent)
        b, h, _ = emb_ctx.shape
        hist, _ = check_action_inputs(self.model.action_dim, 1, b, h, action_history, None, emb_ctx.device, emb_ctx.dtype)
        if self._done is None:
            self._done = torch.zeros(b, dtype=torch.long, device=emb_ctx.device)
        elif self._done.shape[0] != b:
            raise ValueError(f"act() got {b} envs but the previous call had {self._done.shape[0]}; call reset() first")
        k = self.idm.horizon - self._done if self.remaining == "countdown" else torch.full_like(self._done, self.idm.horizon)
        blocks = idm_rollout(self.model, self.idm, emb_ctx, hist.to(emb_ctx.dtype), goal_emb, self.receding_horizon, k)
        self._done = self._done + self.receding_horizon
        return blocks

    def plan(self, obs: torch.Tensor, goal: torch.Tensor, action_history: Optional[torch.Tensor] = None,
             latent: bool = False) -> torch.Tensor:
        """``act`` without advancing the countdown."""
        done = None if self._done is None else self._done.clone()
        try:
            return self.act(obs, goal, action_history, latent)
        finally:
            self._done = done

    def reset(self, envs: Optional[torch.Tensor] = None) -> None:
        """Restart the countdown: for all envs, or only ``envs`` (indices or a (B,) bool mask)."""
        if envs is None or self._done is None:
            self._done = None
        else:
            self._done[envs] = 0

    def reseed(self, seed: int) -> None:
        """Nothing to reseed (the policy is deterministic); kept for the planner interface."""
        check_positive_int(seed, "seed", 0)
