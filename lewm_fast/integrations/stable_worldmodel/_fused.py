"""stable-worldmodel ``Solver``s on lewm_fast's fused planners: ``CEMSolver``, ``MPPISolver``, ``ICEMSolver``.

They implement stable-worldmodel's ``Solver`` protocol (``configure(action_space=, n_envs=, config=)``, ``action_dim``,
``n_envs``, ``horizon``, ``solve(info_dict, init_action=None) -> {"actions", "costs", "mean", "var"}``, ``__call__``)
with its solvers' argument names and defaults, so ``WorldModelPolicy`` takes them in place of its own::

    from lewm_fast.integrations.stable_worldmodel import CEMSolver   # was: from stable_worldmodel.solver import ...
    solver = CEMSolver(model, num_samples=300, topk=30, n_steps=30, device="cuda", seed=1234)
    policy = swm.policy.WorldModelPolicy(solver=solver, config=plan_config, process=..., transform=...)

``model`` is stable-worldmodel's ``LeWM`` (or a lewm_fast ``LeWM``). ``info_dict`` is what ``WorldModelPolicy``
passes: ``pixels`` (B, H, 3, h, w) and ``goal`` (B, Hg, 3, h, w) after its image transform (the last goal frame is the
goal), ``action`` (the action history, see ``history_pairing``); other keys are ignored. stable-worldmodel itself is
never imported.

``history_pairing`` — which actions ride with the H context frames when H > 1 (at H = 1 both are the same):

- ``"swm"`` (default, stable-worldmodel's ``LeWM.get_cost``): candidate blocks 0..H-1 are paired with the H context
  frames, so only ``horizon - H + 1`` steps are predicted and block 0, which the policy executes next, is treated as
  an action taken at the oldest context frame. Costs equal ``get_cost``'s on the same candidates.
- ``"executed"`` (lewm_fast's planners): frames 0..H-2 are paired with the blocks actually executed after them,
  ``info_dict["action"][:, :H-1]`` (B, ≥H-1, action_dim, normalised like the model's actions), candidate block 0
  with the current frame, and the whole horizon is predicted.

Random streams: with ``backend="cpu"``/``"reference"`` every chunk of ``batch_size`` envs draws
``torch.randn(bs, num_samples, horizon, action_dim, generator=g)`` per iteration from ``torch.Generator(device)
.manual_seed(seed)``, as stable-worldmodel's solvers do, so CEM and MPPI plans match theirs draw for draw (iCEM's
coloured noise is built differently, see ``ICEMSolver``). The default ``backend="auto"`` on CUDA samples with Philox in
the fused kernels: the same distribution, other draws.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_int, check_tensor
from ..planning import CEMPlanner, ICEMPlanner, MPPIPlanner, PlannerBase, RolloutEngine, accelerate
from ..planning.base import LoopBuffers
from ..reference.lewm import LeWM

HISTORY_PAIRINGS = ("swm", "executed")


def paired_costs(engine: RolloutEngine, emb_ctx: torch.Tensor, goal_emb: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """stable-worldmodel's ``get_cost`` pairing: emb_ctx (B,H,D), goal_emb (B,D), candidates (B,N,T,A), T >= H ->
    costs (B,N). Blocks 0..H-2 of each candidate ride with context frames 0..H-2, blocks H-1.. are rolled out
    (T - H + 1 predictions): ``RolloutEngine.paired_costs``. At H = 1 this is ``engine.costs`` with no action history."""
    return engine.paired_costs(emb_ctx, goal_emb, cand)


class _CandidateHistory:
    """Planner mixin for ``history_pairing="swm"`` (``paired_costs``). Every candidate's window holds its own blocks
    0..H-1, so no window token is shared by all candidates: nothing is precomputed per plan, and each iteration is
    the plain planners' rollout of the candidates' windows (static shapes, no host work), captured in a CUDA graph
    like theirs at any H."""

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


def _as_lewm(model: nn.Module) -> LeWM:
    """lewm_fast's tensor API over ``model``'s modules (shared parameters): stable-worldmodel's LeWM encodes dicts."""
    if isinstance(model, LeWM):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a LeWM nn.Module (stable-worldmodel's or lewm_fast's), got {type(model).__name__}")
    return accelerate(model)


class _Solver:
    """stable-worldmodel's ``Solver`` protocol over a lewm_fast planner (see the module docstring)."""

    _planners: Dict[str, type]  # history_pairing -> planner class

    def __init__(
        self, model: nn.Module, batch_size: int, num_samples: int, var_scale: float, n_steps: int, topk: int,
        device: str | torch.device, seed: int, history_pairing: str, backend: str, options: Dict[str, Any],
    ) -> None:
        if history_pairing not in HISTORY_PAIRINGS:
            raise ValueError(f"history_pairing must be one of {HISTORY_PAIRINGS}, got {history_pairing!r}")
        check_positive_int(batch_size, "batch_size")
        check_positive_int(seed, "seed", 0)
        self.model = model
        self.lewm = _as_lewm(model)
        self.device = torch.device(device)
        model_device = next(self.lewm.predictor.parameters()).device
        if model_device.type != self.device.type or (self.device.index is not None and model_device != self.device):
            raise ValueError(f"device={str(device)!r} but the model is on {model_device}: move the model or pass its device")
        self.batch_size, self.num_samples, self.var_scale = batch_size, num_samples, var_scale
        self.n_steps, self.topk, self.seed = n_steps, topk, seed
        self.history_pairing, self.backend, self.options = history_pairing, backend, options
        self.planner: Optional[PlannerBase] = None
        self._config: Any = None
        self._n_envs = 0

    # ------------------------------------------------------------------ protocol
    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """Read the env's (batched) action space and the ``PlanConfig`` (``horizon``, ``action_block``); build the
        planner. The flattened action block must be the model's action width."""
        shape = getattr(action_space, "shape", None)
        if not shape or len(shape) < 2:
            raise ValueError(f"action_space must be a batched Box of shape (n_envs, ...), got shape {shape}")
        for key in ("horizon", "action_block"):
            if not isinstance(getattr(config, key, None), int):
                raise ValueError(f"config must be a PlanConfig with an int {key!r}, got {config!r}")
        width = int(np.prod(shape[1:])) * config.action_block
        if width != self.lewm.action_dim:
            raise ValueError(
                f"the env's {int(np.prod(shape[1:]))}-d actions x action_block {config.action_block} = {width}, but the "
                f"model takes {self.lewm.action_dim}-wide action blocks"
            )
        self._config, self._n_envs = config, int(n_envs)
        cls = self._planners[self.history_pairing]
        self.planner = cls(
            self.lewm, num_samples=self.num_samples, topk=self.topk, n_steps=self.n_steps, horizon=config.horizon,
            receding_horizon=config.horizon, var_scale=self.var_scale, backend=self.backend, seed=self.seed,
            **self.options,
        )

    def _configured(self) -> Any:
        if self._config is None:
            raise RuntimeError(f"{type(self).__name__} is not configured: call configure(action_space=, n_envs=, "
                               "config=) first (WorldModelPolicy.set_env does)")
        return self._config

    @property
    def n_envs(self) -> int:
        self._configured()
        return self._n_envs

    @property
    def action_dim(self) -> int:
        """Flattened action block width (env action dim x action_block)."""
        self._configured()
        return self.lewm.action_dim

    @property
    def horizon(self) -> int:
        return int(self._configured().horizon)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lewm.parameters()).dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return self.solve(*args, **kwargs)

    # ------------------------------------------------------------------ solve
    @torch.no_grad()
    def solve(self, info_dict: Dict[str, Any], init_action: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Plan for the B envs of ``info_dict`` in chunks of ``batch_size`` -> ``{"actions": (B, horizon,
        action_dim) mean, "costs": B floats (mean elite cost of the last iteration), "mean": [actions], "var": [std]}``
        on the CPU, as stable-worldmodel's solvers return."""
        self._configured()
        pixels, goal = self._frames(info_dict)
        b, h = pixels.shape[:2]
        if self.history_pairing == "swm" and h > self.horizon:
            raise ValueError(f"history_pairing='swm' pairs the {h} context frames with candidate blocks, so the horizon "
                             f"({self.horizon}) must be at least the history length")
        mean = self._initial_mean(b, init_action)
        history = self._history(info_dict, b, h)
        plans, stds, costs = [], [], []
        for lo in range(0, b, self.batch_size):
            hi = min(lo + self.batch_size, b)
            emb_ctx = self.lewm.encode(pixels[lo:hi])
            goal_emb = self.lewm.encode(goal[lo:hi])[:, 0]
            plan, diag = self.planner.plan(  # type: ignore[union-attr]
                emb_ctx, goal_emb, None if history is None else history[lo:hi], mean[lo:hi], latent=True,
                return_diagnostics=True,
            )
            plans.append(plan)
            stds.append(diag.std[-1])
            costs.extend(diag.elite_costs[-1].mean(1).tolist())
        actions, std = torch.cat(plans).cpu(), torch.cat(stds).cpu()
        return {"actions": actions, "costs": costs, "mean": [actions], "var": [std]}

    @torch.no_grad()
    def get_cost(self, info_dict: Dict[str, Any], candidates: torch.Tensor) -> torch.Tensor:
        """Costs (B, N) float32 of candidates (B, N, horizon, action_dim) from ``info_dict``, under this solver's
        ``history_pairing`` (``"swm"``: what stable-worldmodel's ``LeWM.get_cost`` computes on the same inputs)."""
        self._configured()
        pixels, goal = self._frames(info_dict)
        b, h = pixels.shape[:2]
        check_tensor(candidates, "candidates", ndim=4, last_dim=self.lewm.action_dim)
        if candidates.shape[0] != b or candidates.shape[2] < h:
            raise ValueError(f"candidates must have shape (B={b}, N, T>={h}, {self.lewm.action_dim}), "
                             f"got {tuple(candidates.shape)}")
        emb_ctx, goal_emb = self.lewm.encode(pixels), self.lewm.encode(goal)[:, 0]
        cand = candidates.to(self.device, torch.float32)
        engine = self.planner.engine  # type: ignore[union-attr]
        history = self._history(info_dict, b, h)
        if history is None:
            return paired_costs(engine, emb_ctx, goal_emb, cand)
        return engine.costs(emb_ctx, history, goal_emb, cand)

    def _frames(self, info_dict: Dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context pixels (B,H,3,h,w) and the goal's last frame (B,1,3,h,w), float32 on the model's device."""
        if not isinstance(info_dict, dict):
            raise TypeError(f"info_dict must be a dict, got {type(info_dict).__name__}")
        out = []
        for key in ("pixels", "goal"):
            if key not in info_dict:
                raise KeyError(f"info_dict has no {key!r} (keys: {sorted(info_dict)}); WorldModelPolicy passes the env's "
                               "pixels and goal after its image transform")
            value = info_dict[key]
            if isinstance(value, np.ndarray):
                raise TypeError(f"info_dict[{key!r}] is a numpy array {value.shape}: give WorldModelPolicy an image "
                                f"transform for {key!r} so the solver gets normalised (B, T, 3, h, w) tensors")
            check_tensor(value, f"info_dict[{key!r}]", ndim=5, floating=False)
            if value.shape[2] != 3:
                raise ValueError(f"info_dict[{key!r}] must be (B, T, 3, h, w) channel-first frames, got {tuple(value.shape)}")
            out.append(value.to(self.device, torch.float32))
        pixels, goal = out
        if goal.shape[0] != pixels.shape[0]:
            raise ValueError(f"info_dict['goal'] has {goal.shape[0]} envs but info_dict['pixels'] has {pixels.shape[0]}")
        return pixels, goal[:, -1:]

    def _initial_mean(self, b: int, init_action: Optional[torch.Tensor]) -> torch.Tensor:
        """stable-worldmodel's warm start: ``init_action`` (B, k<=horizon, A) followed by zeros -> (B, horizon, A)."""
        a, t = self.lewm.action_dim, self.horizon
        if init_action is None:
            return torch.zeros(b, t, a, device=self.device)
        check_tensor(init_action, "init_action", ndim=3, last_dim=a, nonempty=False)
        if init_action.shape[0] != b or init_action.shape[1] > t:
            raise ValueError(f"init_action must have shape (B={b}, k<={t}, {a}), got {tuple(init_action.shape)}")
        pad = torch.zeros(b, t - init_action.shape[1], a, device=self.device)
        return torch.cat([init_action.to(self.device, torch.float32), pad], dim=1)

    def _history(self, info_dict: Dict[str, Any], b: int, h: int) -> Optional[torch.Tensor]:
        """``history_pairing="executed"``: the executed blocks paired with context frames 0..H-2, (B, H-1, A)."""
        if self.history_pairing == "swm" or h == 1:
            return None
        a = self.lewm.action_dim
        action = info_dict.get("action")
        if not isinstance(action, torch.Tensor) or action.ndim != 3 or action.shape[0] != b or action.shape[1] < h - 1 \
                or action.shape[2] != a:
            shown = tuple(action.shape) if isinstance(action, (torch.Tensor, np.ndarray)) else type(action).__name__
            raise ValueError(
                f"history_pairing='executed' needs info_dict['action'] as a (B={b}, >={h - 1}, {a}) tensor of the action "
                f"blocks executed after the first {h - 1} context frames (normalised like the model's actions), got "
                f"{shown}; history_pairing='swm' needs no action history"
            )
        return action[:, : h - 1].to(self.device, torch.float32)


class CEMSolver(_Solver):
    """stable-worldmodel's ``CEMSolver`` (same arguments and defaults) on ``lewm_fast.CEMPlanner``.

    ``history_pairing``: see the module docstring. ``backend``: the planner's (``"auto"``: Triton on CUDA, C++ on CPU;
    ``"reference"`` on CUDA reproduces stable-worldmodel's draws). ``batch_size`` envs are planned at once, like its
    solver; raise it to ``n_envs`` for speed (the planner batches envs in one launch).
    """

    _planners = {"swm": _SwmCEM, "executed": CEMPlanner}

    def __init__(
        self, model: nn.Module, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1, n_steps: int = 30,
        topk: int = 30, device: str | torch.device = "cpu", seed: int = 1234, *, history_pairing: str = "swm",
        backend: str = "auto",
    ) -> None:
        super().__init__(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, history_pairing,
                         backend, {})


class MPPISolver(_Solver):
    """stable-worldmodel's ``MPPISolver`` on ``lewm_fast.MPPIPlanner``: softmax(-(cost - min) / temperature) weights
    over the ``topk`` lowest-cost candidates (over all of them when ``topk >= num_samples``); the sampling std stays
    ``var_scale``. ``costs`` is the mean cost of the weighted candidates of the last iteration."""

    _planners = {"swm": _SwmMPPI, "executed": MPPIPlanner}

    def __init__(
        self, model: nn.Module, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1.0, n_steps: int = 30,
        topk: int = 30, temperature: float = 0.5, device: str | torch.device = "cpu", seed: int = 1234, *,
        history_pairing: str = "swm", backend: str = "auto",
    ) -> None:
        topk = min(topk, num_samples)
        super().__init__(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, history_pairing,
                         backend, {"temperature": temperature, "elites_only": topk < num_samples})


class ICEMSolver(_Solver):
    """stable-worldmodel's ``ICEMSolver`` arguments on ``lewm_fast.ICEMPlanner`` (Pinneri et al. 2020).

    ``alpha`` is the mean/std momentum and ``n_elite_keep`` the elites carried into the next iteration, as there.
    Differences, by design: the coloured noise is a fixed linear map of white noise with unit variance per step
    (stable-worldmodel rescales each sample to unit empirical std over the horizon), candidates are not clipped to the
    action space (the solver works on normalised actions), and only ``return_mean=True`` (the default) is offered. So
    iCEM plans match stable-worldmodel's in distribution, not draw for draw.
    """

    _planners = {"swm": _SwmICEM, "executed": ICEMPlanner}

    def __init__(
        self, model: nn.Module, batch_size: int = 1, num_samples: int = 300, var_scale: float = 1, n_steps: int = 30,
        topk: int = 30, noise_beta: float = 2.0, alpha: float = 0.1, n_elite_keep: int = 5, return_mean: bool = True,
        device: str | torch.device = "cpu", seed: int = 1234, *, history_pairing: str = "swm", backend: str = "auto",
    ) -> None:
        if return_mean is not True:
            raise ValueError("ICEMSolver(return_mean=False) (returning the best elite) is not offered by lewm_fast; "
                             "use the default return_mean=True")
        check_positive_int(n_elite_keep, "n_elite_keep", 0)
        if n_elite_keep > topk:
            raise ValueError(f"n_elite_keep ({n_elite_keep}) must be <= topk ({topk})")
        options = {"noise_beta": noise_beta, "momentum": alpha, "keep_elites": n_elite_keep / topk}
        super().__init__(model, batch_size, num_samples, var_scale, n_steps, topk, device, seed, history_pairing,
                         backend, options)


__all__: List[str] = ["CEMSolver", "HISTORY_PAIRINGS", "ICEMSolver", "MPPISolver", "paired_costs"]
