"""The sampling solvers: ``CEMSolver``, ``MPPISolver``, ``ICEMSolver``, ``PredictiveSamplingSolver`` and the
discrete ``CategoricalCEMSolver``, with stable-worldmodel 0.1.1's arguments, defaults, attributes and return dicts.

On a LeWM, CEM and MPPI plan on lewm_fast's fused planners (one graph-captured loop on CUDA); with callbacks CEM runs
stable-worldmodel's loop over the fused engine's costs instead. iCEM (unless ``fused_planner=True``), predictive
sampling and categorical CEM always run its loop, with the engine's costs on a LeWM. Any other ``Costable`` runs its
loop over ``model.get_cost``: the same computation, draw for draw.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ...planning import CEMPlanner, ICEMPlanner, MPPIPlanner
from ...planning.base import LoopBuffers
from ...planning.categorical_cem import gumbel_max_indices, refit_probs
from ._base import (CostFn, SolverBase, check_batch_size, check_costs, env_slice, is_box, plan_costs,
                    prepare_init_action)
from .idm import IDMSeeded, IDMSource


class _CandidateHistory:
    """Planner mixin for ``history_pairing="swm"`` (``RolloutEngine.paired_costs``). Every candidate's window holds its
    own blocks 0..H-1, so no window token is shared by all candidates: nothing is precomputed per plan, and each
    iteration is the plain planners' rollout of the candidates' windows (static shapes, no host work), captured in a
    CUDA graph like theirs at any H."""

    def loop_costs(self, buf: LoopBuffers, cand: torch.Tensor) -> torch.Tensor:
        return self.engine.paired_costs(buf.emb_ctx, buf.goal_emb, cand)  # type: ignore[attr-defined]

    def _prepare_context(self, buf: LoopBuffers) -> None:
        return None  # the action history prefix ``RolloutEngine.prepare`` computes is not used by this pairing


class _SwmCEM(_CandidateHistory, CEMPlanner):
    pass


class _SwmMPPI(_CandidateHistory, MPPIPlanner):
    pass


class _SwmICEM(_CandidateHistory, ICEMPlanner):
    pass


class _DistributionSolver(SolverBase):
    """CEM-style solvers: a Gaussian (mean, std) per env refit each iteration (stable-worldmodel's loop)."""

    _planners: Dict[str, type] = {}  # history_pairing -> fused planner class
    name = ""

    def _setup(self, model: Any, batch_size: int, num_samples: int, var_scale: float, n_steps: int, topk: int,
               device: Any, seed: int, callbacks: Optional[List[Any]], history_pairing: str, backend: str,
               bounds: Tuple[Any, str, float]) -> None:
        check_batch_size(batch_size, allow_none=False)
        self.batch_size, self.num_samples, self.var_scale = batch_size, num_samples, var_scale
        self.n_steps, self.topk = n_steps, topk
        self._init_common(model, device, seed, callbacks, history_pairing, backend, *bounds)
        self.planner = None

    def _planner_options(self) -> Dict[str, Any]:
        return {}

    def _bounds_options(self) -> Dict[str, Any]:
        return dict(action_bounds=self.action_bounds, bounds_mode=self.bounds_mode, bounds_weight=self.bounds_weight)

    def _build_fast(self) -> None:
        self.planner = self._planners[self.history_pairing](
            self._fast.lewm, num_samples=self.num_samples, topk=self.topk,  # type: ignore[union-attr]
            n_steps=self.n_steps,
            horizon=self.horizon, receding_horizon=self.horizon, var_scale=self.var_scale, backend=self.backend,
            seed=self.seed, **self._planner_options(), **self._bounds_options(),
        )
        self._fast.engine = self.planner.engine  # type: ignore[union-attr]

    def _fused(self) -> bool:
        """Whether solve() runs the fused planner (a LeWM, no callbacks)."""
        return self._fast is not None and not self.callbacks

    def init_action_distrib(self, n_envs: int,
                            actions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Initial mean (``actions`` padded with zeros to the horizon) and std (``var_scale``), (n_envs, horizon, A)."""
        var = self.var_scale * torch.ones([n_envs, self.horizon, self.action_dim], dtype=self.dtype)
        mean = torch.zeros([n_envs, 0, self.action_dim], dtype=self.dtype) if actions is None else actions
        remaining = self.horizon - mean.shape[1]
        if remaining > 0:
            device = mean.device
            pad = torch.zeros([n_envs, remaining, self.action_dim], dtype=self.dtype)
            mean = torch.cat([mean, pad], dim=1).to(device)
        return mean, var

    @torch.inference_mode()
    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None) -> dict:
        """Plan for the envs of ``info_dict`` in chunks of ``batch_size`` -> ``{"actions": (B, horizon, A) mean,
        "costs": B floats (mean elite cost of the last iteration), "mean": [actions], "var": [std]}`` on the CPU (and
        ``"callbacks"`` with callbacks), as stable-worldmodel's solver returns."""
        self._cfg()
        total = len(next(iter(info_dict.values())))
        init_action = prepare_init_action(self.model, info_dict, init_action, self.horizon, total, self.action_dim)
        mean, var = self.init_action_distrib(total, init_action)
        mean, var = mean.to(self.device), var.to(self.device)
        outputs: Dict[str, Any] = {"costs": [], "mean": [], "var": []}
        self._cb_reset()
        for lo in range(0, total, self.batch_size):
            hi = min(lo + self.batch_size, total)
            if self._fused():
                batch_mean, batch_var, costs = self._plan_fused(info_dict, lo, hi, mean[lo:hi])
            else:
                cost_fn, _ = self._cost_fn(info_dict, lo, hi, self.num_samples)
                self._cb_start_batch()
                batch_mean, batch_var, costs = self._iterate(cost_fn, self._seed(info_dict, lo, hi, mean[lo:hi]),
                                                             var[lo:hi])
                if self.n_steps == 0:  # the seed's plan (idm=): its cost
                    costs = plan_costs(cost_fn, batch_mean)
            mean[lo:hi] = batch_mean
            var[lo:hi] = batch_var
            outputs["costs"].extend(costs)
        outputs["actions"] = mean.detach().cpu()
        outputs["mean"] = [mean.detach().cpu()]
        outputs["var"] = [var.detach().cpu()]
        return self._cb_finish(outputs)

    def _plan_fused(self, info_dict: dict, lo: int, hi: int,
                    mean: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, list]:
        emb_ctx, goal_emb, history = self._encode(env_slice(info_dict, lo, hi))
        plan, diag = self.planner.plan(emb_ctx, goal_emb, history,  # type: ignore[union-attr]
                                       mean.to(self._fast.device, torch.float32),  # type: ignore[union-attr]
                                       latent=True, return_diagnostics=True)
        if not diag.std:  # n_steps=0 with idm=: the IDM's plan, at var_scale, and its cost
            return plan.to(mean), torch.full_like(mean, self.var_scale), plan_costs(
                self._latent_cost_fn(emb_ctx, goal_emb, history), plan)
        return plan.to(mean), diag.std[-1].to(mean), diag.elite_costs[-1].mean(1).tolist()

    def _seed(self, info_dict: dict, lo: int, hi: int, mean: torch.Tensor) -> torch.Tensor:
        """The initial mean of envs lo:hi on the loop path: the warm-started ``mean`` (the fused planners seed
        their own)."""
        return mean

    def _sample(self, bs: int) -> torch.Tensor:
        return torch.randn(bs, self.num_samples, self.horizon, self.action_dim, generator=self.torch_gen,
                           device=self.device, dtype=self.dtype)

    def _topk(self, costs: torch.Tensor, cand: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vals, inds = torch.topk(costs, k=k, dim=1, largest=False)
        rows = torch.arange(cand.shape[0], device=self.device).unsqueeze(1).expand(-1, k)
        return vals, inds, cand[rows, inds]

    def _iterate(self, cost_fn: CostFn, mean: torch.Tensor,
                 var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, list]:
        raise NotImplementedError


class CEMSolver(IDMSeeded, _DistributionSolver):
    """stable-worldmodel's ``CEMSolver`` (same arguments and defaults): ``num_samples`` candidates ~ N(mean, std)
    with candidate 0 = mean, mean / std <- the ``topk`` lowest-cost candidates' mean / unbiased std, ``n_steps`` times.

    lewm_fast's options: ``history_pairing`` (a LeWM's action history, see the package docstring) and ``backend``
    (the fused planner's: ``"auto"`` is Triton on CUDA, C++ on CPU; on CPU, and with ``"reference"``, its draws are
    stable-worldmodel's). ``batch_size`` envs are planned at once, as there; raise it to ``n_envs`` for speed.
    ``idm`` (a LeWM only; a lewm-train-idm folder / idm.pt, an ``IDMPolicy`` or a ``GCIDM``, see ``resolve_idm``):
    every plan starts from the GC-IDM's plan (``IDMSolver``'s) instead of the warm start, as ``lewm-eval
    planner=idm_cem``; ``n_steps=0`` is then allowed and returns the IDM's plan, with its cost.
    """

    _planners = {"swm": _SwmCEM, "executed": CEMPlanner}

    def __init__(self, model: Any, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1, n_steps: int = 30,
                 topk: int = 30, device: Any = "cpu", seed: int = 1234, callbacks: Optional[List[Any]] = None, *,
                 history_pairing: str = "swm", backend: str = "auto",
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0,
                 idm: Optional[IDMSource] = None) -> None:
        if n_steps == 0 and idm is None:
            raise ValueError("n_steps=0 (no CEM iterations) needs idm=: the plan is then the IDM's")
        self._setup(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, callbacks, history_pairing,
                    backend, (action_bounds, bounds_mode, bounds_weight))
        self._init_idm(idm)

    def _planner_options(self) -> Dict[str, Any]:
        return {} if self._plan_init is None else {"init": self._plan_init}

    def _seed(self, info_dict: dict, lo: int, hi: int, mean: torch.Tensor) -> torch.Tensor:
        return mean if self._plan_init is None else self._idm_plan(*self._encode(env_slice(info_dict, lo, hi))).to(mean)

    def _iterate(self, cost_fn: CostFn, mean: torch.Tensor,
                 var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, list]:
        final = []
        for step in range(self.n_steps):
            cand = self._sample(mean.shape[0]) * var.unsqueeze(1) + mean.unsqueeze(1)
            cand[:, 0] = mean
            cand = self._clip(cand)
            costs = check_costs(cost_fn(cand), mean.shape[0], self.num_samples)
            vals, inds, elites = self._topk(costs, cand, self.topk)
            prev_mean, prev_var = mean, var
            mean, var = elites.mean(dim=1), elites.std(dim=1)
            self._cb_step(step=step, candidates=cand, costs=costs, topk_vals=vals, topk_inds=inds,
                          topk_candidates=elites, mean=mean, var=var, prev_mean=prev_mean, prev_var=prev_var)
            final = vals.mean(dim=1).cpu().tolist()
        return mean, var, final


class MPPISolver(_DistributionSolver):
    """stable-worldmodel's ``MPPISolver``: softmax(-(cost - min) / ``temperature``) weights over the ``topk``
    lowest-cost candidates (over all of them when ``topk >= num_samples``), mean <- the weighted average; the std stays
    ``var_scale``; ``costs`` is the mean cost of the weighted candidates of the last iteration. Options as
    ``CEMSolver``'s. It takes no callbacks (neither does stable-worldmodel's)."""

    _planners = {"swm": _SwmMPPI, "executed": MPPIPlanner}

    def __init__(self, model: Any, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1.0,
                 n_steps: int = 30, topk: int = 30, temperature: float = 0.5, device: Any = "cpu", seed: int = 1234, *,
                 history_pairing: str = "swm", backend: str = "auto",
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0) -> None:
        self.temperature = temperature
        self._setup(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, None, history_pairing,
                    backend, (action_bounds, bounds_mode, bounds_weight))

    def _planner_options(self) -> Dict[str, Any]:
        elites = self.topk is not None and self.topk < self.num_samples
        topk = self.topk if elites else self.num_samples
        return {"temperature": self.temperature, "elites_only": elites, "topk": topk}

    def _build_fast(self) -> None:
        options = self._planner_options()
        self.planner = self._planners[self.history_pairing](
            self._fast.lewm, num_samples=self.num_samples, n_steps=self.n_steps, horizon=self.horizon,  # type: ignore
            receding_horizon=self.horizon, var_scale=self.var_scale, backend=self.backend, seed=self.seed, **options,
            **self._bounds_options(),
        )
        self._fast.engine = self.planner.engine  # type: ignore[union-attr]

    def _iterate(self, cost_fn: CostFn, mean: torch.Tensor,
                 var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, list]:
        final = []
        for _ in range(self.n_steps):
            cand = mean.unsqueeze(1) + self._sample(mean.shape[0]) * var.unsqueeze(1)
            cand[:, 0] = mean
            cand = self._clip(cand)
            costs = check_costs(cost_fn(cand), mean.shape[0], self.num_samples)
            if self.topk is not None and self.topk < self.num_samples:
                costs, _, cand = self._topk(costs, cand, self.topk)
            weights = torch.softmax(-(costs - costs.min(dim=1, keepdim=True)[0]) / self.temperature, dim=1)
            mean = (weights.unsqueeze(-1).unsqueeze(-1) * cand).sum(dim=1)
            final = costs.mean(dim=1).cpu().tolist()
        return mean, var, final


class ICEMSolver(_DistributionSolver):
    """stable-worldmodel's ``ICEMSolver`` (Pinneri et al. 2020): coloured noise of exponent ``noise_beta`` (rescaled
    to unit std over the horizon), ``alpha`` momentum on mean and std, the first ``n_elite_keep`` elites of the last
    iteration carried over, candidates clipped to the action space, ``return_mean`` (False: the best elite). On a
    LeWM its loop runs over the fused engine's costs (draw for draw as there on CPU).

    ``fused_planner=True`` (a LeWM, no callbacks, ``return_mean=True``) plans on ``lewm_fast.ICEMPlanner`` instead, one
    CUDA graph per plan: its coloured noise is a fixed linear map of white noise with the same correlation between
    steps as the FFT-filtered noise but unit variance per step, where stable-worldmodel rescales each sample to unit
    empirical std over the horizon (which raises the per-step variance, to about 1.5 at beta 2 and horizon 5, and
    changes the correlation), and it does not clip (the model's actions are normalised, the env box is not). Its
    plans therefore differ from stable-worldmodel's in distribution, not only in draws.
    """

    _planners = {"swm": _SwmICEM, "executed": ICEMPlanner}

    def __init__(self, model: Any, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1, n_steps: int = 30,
                 topk: int = 30, noise_beta: float = 2.0, alpha: float = 0.1, n_elite_keep: int = 5,
                 return_mean: bool = True, device: Any = "cpu", seed: int = 1234, callbacks: Optional[List[Any]] = None,
                 *, history_pairing: str = "swm", backend: str = "auto", fused_planner: bool = False,
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0) -> None:
        self.noise_beta, self.alpha, self.n_elite_keep, self.return_mean = noise_beta, alpha, n_elite_keep, return_mean
        self.fused_planner = fused_planner
        self._setup(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, callbacks, history_pairing,
                    backend, (action_bounds, bounds_mode, bounds_weight))

    def _planner_options(self) -> Dict[str, Any]:
        return {"noise_beta": self.noise_beta, "momentum": self.alpha,
                "keep_elites": min(self.n_elite_keep, self.topk) / self.topk}

    def _fused(self) -> bool:
        return super()._fused() and self.return_mean and self.fused_planner

    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """As the base, plus the action bounds (tiled over the action block) that candidates are clipped to."""
        super().configure(action_space=action_space, n_envs=n_envs, config=config)
        self._action_low: Optional[torch.Tensor] = None
        self._action_high: Optional[torch.Tensor] = None
        if is_box(action_space):
            bounds = [torch.tensor(b[0], device=self.device, dtype=self.dtype).repeat(config.action_block)
                      for b in (action_space.low, action_space.high)]
            self._action_low, self._action_high = bounds

    def _iterate(self, cost_fn: CostFn, mean: torch.Tensor,
                 var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, list]:
        bs = mean.shape[0]
        shape = (bs, self.num_samples, self.action_dim, self.horizon)
        freqs = torch.fft.rfftfreq(self.horizon, device=self.device).to(self.dtype)
        freqs[0] = 1.0
        scale = freqs.pow(-self.noise_beta / 2)
        scale[0] = scale[1] if scale.numel() > 1 else scale[0]
        prev_elites = None
        for step in range(self.n_steps):
            white = torch.randn(shape, generator=self.torch_gen, device=self.device, dtype=self.dtype)
            if self.horizon <= 1:
                noise = white
            else:
                colored = torch.fft.irfft(torch.fft.rfft(white, dim=-1) * scale, n=self.horizon, dim=-1)
                noise = colored / colored.std(dim=-1, keepdim=True).clamp(min=1e-8)
            cand = noise.transpose(-1, -2) * var.unsqueeze(1) + mean.unsqueeze(1)
            cand[:, 0] = mean
            if prev_elites is not None:
                n_inject = min(self.n_elite_keep, prev_elites.shape[1])
                cand[:, 1:1 + n_inject] = prev_elites[:, :n_inject]
            if self._action_low is not None:
                cand = cand.clamp(self._action_low, self._action_high)
            cand = self._clip(cand)
            costs = check_costs(cost_fn(cand), bs, self.num_samples)
            vals, inds, elites = self._topk(costs, cand, self.topk)
            prev_elites = elites
            prev_mean, prev_var = mean, var
            mean = self.alpha * mean + (1 - self.alpha) * elites.mean(dim=1)
            var = self.alpha * var + (1 - self.alpha) * elites.std(dim=1)
            self._cb_step(step=step, candidates=cand, costs=costs, topk_vals=vals, topk_inds=inds,
                          topk_candidates=elites, mean=mean, var=var, prev_mean=prev_mean, prev_var=prev_var,
                          action_low=self._action_low, action_high=self._action_high)
        final = vals.mean(dim=1).cpu().tolist()
        return (mean if self.return_mean else elites[:, 0]), var, final


class PredictiveSamplingSolver(SolverBase):
    """stable-worldmodel's ``PredictiveSamplingSolver`` (Howell et al. 2022): one round of ``num_samples`` candidates
    = nominal + ``noise_scale`` x N(0, 1) (candidate 0 = the nominal, so the result is never worse than the warm start),
    the lowest-cost one is the plan. -> ``{"actions", "costs"}`` (the chosen candidates' costs). On a LeWM the costs
    come from the fused engine (one batched evaluation per chunk); ``init_action`` is zero-padded (not extended by
    an ``Actionable`` model, as there)."""

    def __init__(self, model: Any, batch_size: int = 1, num_samples: int = 300, noise_scale: float = 1.0,
                 device: Any = "cpu", seed: int = 1234, *, history_pairing: str = "swm", backend: str = "auto",
                 action_bounds: Optional[Any] = None, bounds_mode: str = "clip", bounds_weight: float = 10.0) -> None:
        check_batch_size(batch_size, allow_none=False)
        self.batch_size, self.num_samples, self.noise_scale = batch_size, num_samples, noise_scale
        self._init_common(model, device, seed, None, history_pairing, backend, action_bounds, bounds_mode,
                          bounds_weight)

    def init_nominal(self, n_envs: int, actions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``actions`` (n_envs, t <= horizon, A) padded with zeros to the horizon."""
        nominal = torch.zeros([n_envs, 0, self.action_dim], dtype=self.dtype) if actions is None else actions
        remaining = self.horizon - nominal.shape[1]
        if remaining > 0:
            device = nominal.device
            pad = torch.zeros([n_envs, remaining, self.action_dim], dtype=self.dtype)
            nominal = torch.cat([nominal, pad], dim=1).to(device)
        return nominal

    @torch.inference_mode()
    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None) -> dict:
        self._cfg()
        total = len(next(iter(info_dict.values())))
        nominal = self.init_nominal(total, init_action).to(self.device)
        outputs: Dict[str, Any] = {"costs": []}
        for lo in range(0, total, self.batch_size):
            hi = min(lo + self.batch_size, total)
            bs = hi - lo
            cost_fn, _ = self._cost_fn(info_dict, lo, hi, self.num_samples)
            batch_nominal = nominal[lo:hi]
            noise = torch.randn(bs, self.num_samples, self.horizon, self.action_dim, generator=self.torch_gen,
                                device=self.device, dtype=self.dtype)
            cand = batch_nominal.unsqueeze(1) + noise * self.noise_scale
            cand[:, 0] = batch_nominal
            cand = self._clip(cand)
            costs = check_costs(cost_fn(cand), bs, self.num_samples)
            best = costs.argmin(dim=1)
            rows = torch.arange(bs, device=self.device)
            nominal[lo:hi] = cand[rows, best]
            outputs["costs"].extend(costs[rows, best].cpu().tolist())
        outputs["actions"] = nominal.detach().cpu()
        return outputs


class CategoricalCEMSolver(SolverBase):
    """stable-worldmodel's ``CategoricalCEMSolver`` for a Discrete action space of n categories: a categorical
    distribution per (step, block position), candidates by Gumbel-max (candidate 0 = the argmax), one-hot
    (B, N, horizon, action_block * n) into the model, refit to the ``topk`` elites' frequencies (``smoothing``,
    ``alpha`` momentum). -> ``{"actions": (B, horizon, action_block) int64, "costs", "probs": [(B, horizon,
    action_block, n)]}``. On a LeWM the one-hot blocks go through its action encoder (the model's action width must be
    action_block * n) on the fused engine."""

    continuous = False

    def __init__(self, model: Any, batch_size: int = 1, num_samples: int = 300, n_steps: int = 30, topk: int = 30,
                 smoothing: float = 0.0, alpha: float = 0.0, device: Any = "cpu", seed: int = 1234,
                 callbacks: Optional[List[Any]] = None, *, history_pairing: str = "swm", backend: str = "auto") -> None:
        check_batch_size(batch_size, allow_none=False)
        self.batch_size, self.num_samples, self.n_steps, self.topk = batch_size, num_samples, n_steps, topk
        self.smoothing, self.alpha = smoothing, alpha
        self._init_common(model, device, seed, callbacks, history_pairing, backend)

    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """A Discrete space (``n`` categories) is required (AssertionError otherwise, as there)."""
        assert hasattr(action_space, "n") and not is_box(action_space), (
            f"Action space must be Discrete, got {type(action_space)}")
        self._action_space = action_space
        self._n_envs = n_envs
        self._config = config
        self._base_simplex_dim = int(action_space.n)
        self._configured = True
        if self._fast is not None:
            if self.action_simplex_dim != self._fast.lewm.action_dim:
                raise ValueError(f"{self._base_simplex_dim} categories x action_block {config.action_block} = "
                                 f"{self.action_simplex_dim} one-hot values per block, but the model takes "
                                 f"{self._fast.lewm.action_dim}-wide action blocks")
            self._build_fast()

    @property
    def action_dim(self) -> int:
        raise AttributeError("CategoricalCEMSolver has no action_dim (as stable-worldmodel's): see action_simplex_dim")

    @property
    def action_block(self) -> int:
        return self._cfg().action_block

    @property
    def base_simplex_dim(self) -> int:
        """Number of categories per action position."""
        self._cfg()
        return self._base_simplex_dim

    @property
    def action_simplex_dim(self) -> int:
        """Flattened one-hot width including action_block grouping."""
        return self.base_simplex_dim * self.action_block

    def init_probs(self, n_envs: int) -> torch.Tensor:
        """Uniform probabilities (n_envs, horizon, action_block, n)."""
        k = self._base_simplex_dim
        return torch.full((n_envs, self.horizon, self.action_block, k), 1.0 / k, dtype=self.dtype, device=self.device)

    def _sample_indices(self, probs: torch.Tensor) -> torch.Tensor:
        """Gumbel-max indices (B, num_samples, H, action_block) from probs (B, H, action_block, n)."""
        return gumbel_max_indices(probs, self.num_samples, self.torch_gen)

    @torch.inference_mode()
    def solve(self, info_dict: dict, init_action: Any = None) -> dict:
        """``init_action`` is accepted and ignored (probabilities start uniform), as there."""
        del init_action
        self._cfg()
        total = len(next(iter(info_dict.values())))
        probs = self.init_probs(total)
        outputs: Dict[str, Any] = {"costs": [], "probs": []}
        self._cb_reset()
        for lo in range(0, total, self.batch_size):
            hi = min(lo + self.batch_size, total)
            bs = hi - lo
            batch_probs = probs[lo:hi]
            cost_fn, _ = self._cost_fn(info_dict, lo, hi, self.num_samples)
            self._cb_start_batch()
            final = []
            for step in range(self.n_steps):
                indices = self._sample_indices(batch_probs)
                indices[:, 0] = batch_probs.argmax(dim=-1)
                one_hot = torch.nn.functional.one_hot(indices, num_classes=self._base_simplex_dim).to(self.dtype)
                cand = one_hot.reshape(bs, self.num_samples, self.horizon, self.action_simplex_dim)
                costs = check_costs(cost_fn(cand), bs, self.num_samples)
                vals, inds = torch.topk(costs, k=self.topk, dim=1, largest=False)
                rows = torch.arange(bs, device=self.device).unsqueeze(1).expand(-1, self.topk)
                elites = one_hot[rows, inds]
                prev_probs = batch_probs
                batch_probs = refit_probs(batch_probs, elites, self.smoothing, self.alpha)
                self._cb_step(step=step, candidates=cand, costs=costs, topk_vals=vals, topk_inds=inds,
                              topk_candidates=elites, probs=batch_probs, prev_probs=prev_probs)
                final = vals.mean(dim=1).cpu().tolist()
            probs[lo:hi] = batch_probs
            outputs["costs"].extend(final)
        outputs["actions"] = probs.argmax(dim=-1).detach().cpu()
        outputs["probs"] = [probs.detach().cpu()]
        return self._cb_finish(outputs)


__all__ = ["CEMSolver", "CategoricalCEMSolver", "ICEMSolver", "MPPISolver", "PredictiveSamplingSolver"]
