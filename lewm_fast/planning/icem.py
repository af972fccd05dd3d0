"""iCEM planner (Pinneri et al., 2020: "Sample-efficient cross-entropy method for real-time planning") on the fused
rollout engine: coloured noise over the horizon, elites kept across iterations and shifted across replans, momentum."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..reference.lewm import LeWM
from .base import LoopBuffers, PlannerBase, warm_start
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike
from .rollout import RolloutEngine


def colored_noise_basis(beta: float, horizon: int) -> torch.Tensor:
    """(R, T) float32 matrix M: for z (..., R) ~ N(0, I), ``z @ M`` is stationary Gaussian noise over T steps with power
    spectrum ∝ 1/f^beta (random real/imaginary Fourier coefficients as in the ``colorednoise`` package, frequencies
    below 1/T clipped to 1/T), scaled to unit variance per step. beta = 0 gives white noise."""
    t = horizon
    freqs = torch.fft.rfftfreq(t, dtype=torch.float64).clamp(min=1.0 / t)
    amp = freqs.pow(-beta / 2.0)
    rows = []
    for k in range(freqs.numel()):
        self_conjugate = k == 0 or (t % 2 == 0 and k == freqs.numel() - 1)  # real-valued Fourier coefficient
        for part in (1.0, 1j):
            if part == 1j and self_conjugate:
                continue
            coeff = torch.zeros(freqs.numel(), dtype=torch.complex128)
            coeff[k] = part * amp[k] * (math.sqrt(2.0) if self_conjugate else 1.0)
            rows.append(torch.fft.irfft(coeff, n=t))
    basis = torch.stack(rows)
    return (basis / basis.square().sum(0).sqrt()).float()


class ICEMPlanner(PlannerBase):
    """iCEM over action sequences, B environments at once.

    Per iteration: candidates = mean + std * coloured noise (exponent ``noise_beta`` over the horizon axis), candidate
    0 = mean; candidates 1..n_keep are the ``n_keep = round(keep_elites * topk)`` best elites of the previous iteration
    (in the first iteration of an ``act`` step: the previous step's final elites shifted by ``receding_horizon``, the
    freed tail steps sampled); costs; elites = ``topk`` lowest; mean/std <- ``momentum * old + (1 - momentum) * elite``.
    The population size stays fixed (static shapes for CUDA graphs).
    """

    COLD_CARRY = {**PlannerBase.COLD_CARRY, "init_elites": float("nan")}

    def __init__(
        self,
        model: LeWM,
        num_samples: int = 300,
        topk: int = 30,
        n_steps: int = 30,
        horizon: int = 5,
        receding_horizon: int = 5,
        var_scale: float = 1.0,
        noise_beta: float = 2.0,
        keep_elites: float = 0.3,
        momentum: float = 0.1,
        backend: str = "auto",
        dtype: Optional[torch.dtype] = None,
        seed: Optional[int] = None,
        engine: Optional[RolloutEngine] = None,
        cuda_graph: bool = True,
        precision: str = "ieee",
        action_bounds: Optional[BoundsLike] = None,
        bounds_mode: str = "clip",
        bounds_weight: float = DEFAULT_PENALTY_WEIGHT,
    ):
        if not noise_beta >= 0:
            raise ValueError(f"noise_beta must be >= 0, got {noise_beta}")
        if not 0 <= keep_elites <= 1:
            raise ValueError(f"keep_elites must be a fraction in [0, 1], got {keep_elites}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(
            model, num_samples=num_samples, topk=topk, n_steps=n_steps, horizon=horizon,
            receding_horizon=receding_horizon, var_scale=var_scale, backend=backend, dtype=dtype, seed=seed,
            engine=engine, cuda_graph=cuda_graph, precision=precision, action_bounds=action_bounds,
            bounds_mode=bounds_mode, bounds_weight=bounds_weight,
        )
        self.noise_beta, self.momentum = float(noise_beta), float(momentum)
        self.n_keep = min(int(round(keep_elites * topk)), num_samples - 1)
        self.basis = colored_noise_basis(self.noise_beta, horizon).to(self.device)

    def _new_buffers(self, emb_ctx: torch.Tensor) -> LoopBuffers:
        buf = super()._new_buffers(emb_ctx)
        b, n, t, a = buf.cand.shape[1:]
        new = lambda *shape: torch.empty(*shape, device=buf.cand.device)  # noqa: E731
        buf.extra.update(
            white=new(b, n, a, self.basis.shape[0]), colored=new(b, n, a, t), kept=new(b, self.n_keep, t, a),
            init_elites=new(b, self.n_keep, t, a), elite_mean=new(b, t, a), elite_std=new(b, t, a),
        )
        return buf

    def _load_carry(self, buf: LoopBuffers, carry: Optional[Dict[str, torch.Tensor]]) -> None:
        if carry is None:
            buf.extra["init_elites"].fill_(float("nan"))
        else:
            buf.extra["init_elites"].copy_(carry["init_elites"])

    def _carry_out(self, buf: LoopBuffers) -> Dict[str, torch.Tensor]:
        return {"init_elites": warm_start(buf.extra["kept"], self.receding_horizon, pad="nan")}

    def _loop(self, buf: LoopBuffers) -> None:
        x = buf.extra
        buf.bad.zero_()
        mean, std, cand = buf.init_mean, buf.init_std, buf.cand[0]
        kept_rows = cand[:, 1 : 1 + self.n_keep]
        index = buf.elite_idx[:, : self.n_keep, None, None].expand(-1, -1, *cand.shape[2:])
        for i in range(self.n_steps):
            self.noise.normal_(x["white"], i)
            torch.matmul(x["white"], self.basis, out=x["colored"])
            cand.copy_(x["colored"].transpose(2, 3)).mul_(std.unsqueeze(1)).add_(mean.unsqueeze(1))
            cand[:, 0] = mean
            keep = x["init_elites"] if i == 0 else x["kept"]
            kept_rows.copy_(torch.where(torch.isnan(keep), kept_rows, keep))  # NaN: no elite for that step
            self.clip_(cand)
            costs = self.loop_costs(buf, cand)
            self.refit_(buf, cand, costs, x["elite_mean"], x["elite_std"], i)
            torch.gather(cand, 1, index, out=x["kept"])
            mean = torch.lerp(x["elite_mean"], mean, self.momentum, out=buf.means[i])
            std = torch.lerp(x["elite_std"], std, self.momentum, out=buf.stds[i])
            self.clip_(mean)
        self.advance_noise_()
