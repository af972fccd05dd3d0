"""What every sampling planner on the rollout engine shares: argument checks, obs/goal encoding, the candidate noise
streams, warm start and the MPC loop state.

Backends (``resolve_backend`` on the model's device): ``"triton"`` samples with Philox in the fused Triton kernels of
the ``elite_refit`` op (``ops/elite_refit.py``) and, on CUDA, captures the whole planning loop in a CUDA graph;
``"cpu"`` / ``"reference"`` draw ``torch.randn(B, N, T, A, generator=g)`` per iteration exactly like the reference
``CEMSolver``, so seeded plans match it. The CEM distribution (mean, std, candidates) is always float32.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Tuple

import torch

from .._validation import check_positive_int, check_tensor
from ..backends import resolve_backend
from ..ops.elite_refit import EliteRefit, elite_refit_into, philox_normal_, sample_candidates_
from ..reference.cem import PlanDiagnostics, check_action_inputs, check_cem_settings, prepare_inputs
from ..reference.lewm import LeWM
from .bounds import DEFAULT_PENALTY_WEIGHT, BoundsLike, make_bounds
from .cuda_graph import GraphedLoop
from .rollout import RolloutEngine
from .state import persistent


def warm_start(prev_plan: torch.Tensor, executed_blocks: int, pad: str = "zeros") -> torch.Tensor:
    """Shift plans (..., T, A) left in time by the ``executed_blocks`` already executed and pad the tail with zeros,
    the last block (``"last"``) or NaN (``"nan"``: "no value", e.g. for kept iCEM elites). (B,T,A) or (B,S,T,A)."""
    check_tensor(prev_plan, "prev_plan", ndim=(3, 4), nonempty=False)
    horizon = prev_plan.shape[-2]
    if isinstance(executed_blocks, bool) or not isinstance(executed_blocks, int) or not 0 <= executed_blocks <= horizon:
        raise ValueError(f"executed_blocks must be an int in [0, {horizon}], got {executed_blocks!r}")
    fills = {"zeros": 0.0, "nan": float("nan")}
    if pad not in ("last", *fills):
        raise ValueError(f"pad must be 'zeros', 'last' or 'nan', got {pad!r}")
    last = prev_plan[..., -1:, :]
    fill = last if pad == "last" else torch.full_like(last, fills[pad])
    tail = fill.expand(*last.shape[:-2], executed_blocks, last.shape[-1])
    return torch.cat([prev_plan[..., executed_blocks:, :], tail], dim=-2)


class TorchNoise:
    """Standard normals from a ``torch.Generator`` (the reference planner's stream)."""

    def __init__(self, generator: Optional[torch.Generator]):
        self.generator = generator

    def normal_(self, out: torch.Tensor, key_offset: int) -> torch.Tensor:
        return torch.randn(out.shape, generator=self.generator, out=out)


class PhiloxNoise:
    """Standard normals from the Triton Philox kernel; the key lives on the device (``seed_buf``) so a captured graph
    advances it in place: sampling call ``i`` of a plan uses key ``seed + i``, and each plan adds ``n_steps``."""

    def __init__(self, seed: int, device: torch.device):
        with persistent():  # advanced in place by every plan, whatever mode it runs in
            self.seed_buf = torch.tensor([seed], dtype=torch.long, device=device)

    def normal_(self, out: torch.Tensor, key_offset: int) -> torch.Tensor:
        return philox_normal_(out, self.seed_buf, key_offset)


def default_planning_dtype(device: torch.device, backend: str, precision: str = "ieee") -> torch.dtype:
    """The rollout dtype a planner uses when given none: bfloat16 on CUDA with the Triton backend (unless a float32
    ``precision`` other than "ieee" is asked for), float32 elsewhere. bf16 planning kept the shipped Two-Room model's
    success at 50/50 with 98.8 % of the elites of float32 (bench/results/precision-study-2026-12-07.md) and is the
    fast path on a GPU (docs/gpu.md); ``dtype=torch.float32`` is the exact mode."""
    if torch.device(device).type == "cuda" and backend == "triton" and precision == "ieee":
        return torch.bfloat16
    return torch.float32


class LoopBuffers:
    """Static buffers of one problem shape: inputs (copied in per plan), the candidate ping-pong pair and per-iteration
    outputs. Subclasses add their own in ``extra``."""

    def __init__(self, planner: "PlannerBase", emb_ctx: torch.Tensor):
        b, h, d = emb_ctx.shape
        t, a, n, k, steps = planner.horizon, planner.model.action_dim, planner.num_samples, planner.topk, planner.n_steps
        dev, f32 = emb_ctx.device, torch.float32
        self.emb_ctx = torch.empty_like(emb_ctx, memory_format=torch.contiguous_format)
        self.hist = torch.empty(b, h - 1, a, device=dev, dtype=f32)
        self.goal_emb = torch.empty(b, d, device=dev, dtype=emb_ctx.dtype)
        self.init_mean = torch.empty(b, t, a, device=dev, dtype=f32)
        self.init_std = torch.full((b, t, a), planner.var_scale, device=dev, dtype=f32)
        self.cand = torch.empty(2, b, n, t, a, device=dev, dtype=f32)
        self.means = torch.empty(steps, b, t, a, device=dev, dtype=f32)
        self.stds = torch.empty(steps, b, t, a, device=dev, dtype=f32)
        self.elite_costs = torch.empty(steps, b, k, device=dev, dtype=f32)
        self.elite_idx = torch.empty(b, k, device=dev, dtype=torch.long)
        self.bad = torch.zeros(b, device=dev, dtype=torch.int32)
        self.extra: Dict[str, torch.Tensor] = {}
        self.context = None  # RolloutEngine.prepare(emb_ctx, hist), remade at the start of every plan
        self.runner: Optional[GraphedLoop] = None


class PlannerBase(abc.ABC):
    """Sampling-based MPC planner over action sequences (B, horizon, action_dim) with a ``RolloutEngine``.

    ``plan(obs, goal, action_history=None, init_mean=None, latent=False, return_diagnostics=False)`` mirrors the
    reference ``CEMSolver.plan``; ``act(...)`` is the MPC step (plan warm-started from the previous call's plan, return
    the first ``receding_horizon`` blocks); ``reset()`` forgets that state. Subclasses implement ``_loop`` on
    ``LoopBuffers`` (one set per input shape, so a CUDA graph can be captured per shape).

    ``action_bounds=(low, high)`` (each (A,), normalised units, e.g. ``bounds.normalized_box`` of the env's box) keeps
    plans inside the actions the model was trained on: ``bounds_mode="clip"`` clamps every candidate (and mean) into
    them, ``"penalty"`` adds ``bounds_weight * sum excess^2`` to each candidate's cost (``planning.bounds``). None (the
    default, stable-worldmodel's CEM/MPPI) leaves the plans exactly as without the option.
    """

    COLD_CARRY: Dict[str, float] = {"init_mean": 0.0}  # what each carried MPC tensor holds for a restarted env

    def __init__(
        self,
        model: LeWM,
        num_samples: int = 300,
        topk: int = 30,
        n_steps: int = 30,
        horizon: int = 5,
        receding_horizon: int = 5,
        var_scale: float = 1.0,
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
        self._check_settings(num_samples, topk, n_steps, horizon, receding_horizon, var_scale)
        if seed is not None:
            check_positive_int(seed, "seed", 0)
        self.model = model
        self.bounds = make_bounds(action_bounds, model.action_dim, self.device, bounds_mode, bounds_weight)
        self.num_samples, self.topk, self.n_steps = num_samples, topk, n_steps
        self.horizon, self.receding_horizon, self.var_scale = horizon, receding_horizon, float(var_scale)
        self.backend = backend
        self.which = resolve_backend(backend, self.device)
        if engine is None:
            dtype = default_planning_dtype(self.device, self.which, precision) if dtype is None else dtype
            engine = RolloutEngine(model, backend=backend, dtype=dtype, precision=precision)
        self.engine = engine
        self.cuda_graph = cuda_graph
        if self.which == "triton":
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)))
            self.noise: Any = PhiloxNoise(seed, self.device)
        else:
            generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
            self.noise = TorchNoise(generator)
        self._carry: Optional[Dict[str, torch.Tensor]] = None  # MPC state between act() calls
        self._buffers: Dict[Tuple[Any, ...], LoopBuffers] = {}

    def __getstate__(self) -> dict:
        """Copies (``copy.deepcopy``) and pickles leave the loop buffers behind: they are caches whose runner closes
        over this very planner (and on CUDA holds captured graphs), so a copy that kept them would run the original's
        loop. The copy builds its own on its first plan; the MPC state and the noise stream are copied."""
        state = self.__dict__.copy()
        state["_buffers"] = {}
        return state

    def _check_settings(self, num_samples: int, topk: int, n_steps: int, horizon: int, receding_horizon: int,
                        var_scale: float) -> None:
        """ValueError for settings this planner cannot run (the sampling planners' rules by default)."""
        check_cem_settings(num_samples, topk, n_steps, horizon, receding_horizon, var_scale)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def captures(self) -> bool:
        """Whether plans run as a replayed CUDA graph."""
        return self.cuda_graph and self.which == "triton" and self.device.type == "cuda"

    # ------------------------------------------------------------------ inputs
    def prepare(self, obs: torch.Tensor, goal: torch.Tensor, latent: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Check and encode context and goal (the reference planner's rules): -> emb_ctx (B,H,D), goal_emb (B,D)."""
        return prepare_inputs(self.model, obs, goal, latent)

    def _check_actions(
        self, b: int, h: int, action_history: Optional[torch.Tensor], init_mean: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> action_history (B,H-1,A), initial mean (B,horizon,A), both float32 (zeros by default)."""
        a = self.model.action_dim
        hist, mean = check_action_inputs(a, self.horizon, b, h, action_history, init_mean, self.device, torch.float32)
        return hist.float(), mean.float()

    def costs(self, emb_ctx: torch.Tensor, action_history: torch.Tensor, goal_emb: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Costs (B,N) of candidates (B,N,T,A) from context emb_ctx (B,H,D), as the reference ``CEMSolver.costs``."""
        costs = self.engine.costs(emb_ctx, action_history, goal_emb, candidates)
        return costs if self.bounds is None else self.bounds.add_penalty(costs, candidates)

    def loop_costs(self, buf: "LoopBuffers", cand: torch.Tensor) -> torch.Tensor:
        """Costs (B,N) of ``cand`` inside the planning loop, reusing the plan's precomputed context work."""
        costs = self.engine.costs(buf.emb_ctx, buf.hist, buf.goal_emb, cand, context=buf.context)
        return costs if self.bounds is None else self.bounds.add_penalty(costs, cand)

    # ------------------------------------------------------------------ sampling
    def sample_(self, out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, key_offset: int) -> torch.Tensor:
        """out (B,N,T,A) <- randn * std + mean with candidate 0 = mean (the reference ``sample_candidates``)."""
        if self.which == "triton":
            return self.clip_(sample_candidates_(out, mean, std, self.noise.seed_buf, key_offset))
        self.noise.normal_(out, key_offset)
        out.mul_(std.unsqueeze(1)).add_(mean.unsqueeze(1))
        out[:, 0] = mean
        return self.clip_(out)

    def clip_(self, x: torch.Tensor) -> torch.Tensor:
        """With ``action_bounds`` in clip mode, clamp ``x`` (..., A) into them in place (candidates after sampling,
        means after a refit: rounding may put an average of clipped elites an ulp outside); else ``x`` as is."""
        return x if self.bounds is None else self.bounds.clip_(x)

    def refit_(self, buf: "LoopBuffers", cand: torch.Tensor, costs: torch.Tensor, mean_out: torch.Tensor, std_out: torch.Tensor, i: int) -> None:
        """Elite refit of iteration ``i`` into mean_out/std_out, buf.elite_idx and buf.elite_costs[i]. Triton flags a
        divergence in buf.bad (no sync); the CPU/reference refit raises ValueError at once, like the reference."""
        out = EliteRefit(mean_out, std_out, buf.elite_idx, buf.elite_costs[i])
        elite_refit_into(cand, costs, self.topk, out, buf.bad, self.which)
        self.clip_(mean_out)

    def advance_noise_(self) -> None:
        """After a plan: move the Philox key past the ``n_steps`` keys it used (a device op, captured in the graph)."""
        if isinstance(self.noise, PhiloxNoise):
            self.noise.seed_buf.add_(self.n_steps)

    # ------------------------------------------------------------------ planning
    @torch.no_grad()
    def plan(
        self,
        obs: torch.Tensor,
        goal: torch.Tensor,
        action_history: Optional[torch.Tensor] = None,
        init_mean: Optional[torch.Tensor] = None,
        latent: bool = False,
        return_diagnostics: bool = False,
    ):
        """-> plan (B, horizon, A) float32 [, PlanDiagnostics with per-iteration elite costs (B,k), mean, std]."""
        emb_ctx, goal_emb = self.prepare(obs, goal, latent)
        b, h, _ = emb_ctx.shape
        hist, mean = self._check_actions(b, h, action_history, init_mean)
        plan, diag, _ = self._run(emb_ctx, hist, goal_emb, mean, return_diagnostics, None)
        return (plan, diag) if return_diagnostics else plan

    def _run(
        self,
        emb_ctx: torch.Tensor,
        hist: torch.Tensor,
        goal_emb: torch.Tensor,
        mean: torch.Tensor,
        diagnostics: bool,
        carry: Optional[Dict[str, torch.Tensor]],
    ) -> Tuple[torch.Tensor, Optional[PlanDiagnostics], Dict[str, torch.Tensor]]:
        """Copy the inputs into the static buffers of their shape, run the (graphed) loop, check the divergence flag
        once. -> (plan, diagnostics or None, state to carry to the next MPC step besides the plan)."""
        key = (tuple(emb_ctx.shape), emb_ctx.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            with persistent():  # reused by later plans, which may run outside torch.inference_mode()
                buf = self._buffers[key] = self._new_buffers(emb_ctx)
        buf.emb_ctx.copy_(emb_ctx)
        buf.hist.copy_(hist)
        buf.goal_emb.copy_(goal_emb)
        buf.init_mean.copy_(mean)
        self._load_carry(buf, carry)
        buf.runner()
        if bool(buf.bad.any()):
            envs = buf.bad.nonzero().flatten().tolist()
            raise ValueError(
                f"fewer than topk={self.topk} candidates had a finite cost in env(s) {envs} during the plan: the model "
                "diverged; NaN/inf candidates are never used as elites"
            )
        plan = buf.means[-1].clone()
        diag = None
        if diagnostics:
            diag = PlanDiagnostics(
                list(buf.elite_costs.clone().unbind(0)), list(buf.means.clone().unbind(0)), list(buf.stds.clone().unbind(0))
            )
        with persistent():  # carried to the next act() (or reset()), which may run outside torch.inference_mode()
            extra = self._carry_out(buf)
        return plan, diag, extra

    def _new_buffers(self, emb_ctx: torch.Tensor) -> "LoopBuffers":
        buf = LoopBuffers(self, emb_ctx)
        preserve = (self.noise.seed_buf,) if isinstance(self.noise, PhiloxNoise) else ()
        buf.runner = GraphedLoop(lambda: self._iterate(buf), capture=self._capturable(emb_ctx), preserve=preserve)
        return buf

    def _capturable(self, emb_ctx: torch.Tensor) -> bool:
        """Whether plans with this context shape run as a captured CUDA graph."""
        return self.captures

    def _iterate(self, buf: "LoopBuffers") -> None:
        """One plan's device work: the context-only part of the rollout once, then the planner's iterations."""
        buf.context = self._prepare_context(buf)
        self._loop(buf)

    def _prepare_context(self, buf: "LoopBuffers") -> Any:
        """The context-only part of the rollout its costs reuse (``RolloutEngine.prepare``)."""
        return self.engine.prepare(buf.emb_ctx, buf.hist)

    @abc.abstractmethod
    def _loop(self, buf: "LoopBuffers") -> None:
        """The planning iterations: from buf.init_mean (and buf.init_std) write buf.means/stds/elite_costs[i] for each
        iteration i; record non-finite elites in buf.bad (or raise). Device ops on ``buf`` only (it may be captured)."""

    def _load_carry(self, buf: "LoopBuffers", carry: Optional[Dict[str, torch.Tensor]]) -> None:
        """Copy MPC state other than the warm-start mean into ``buf`` (none by default)."""

    def _carry_out(self, buf: "LoopBuffers") -> Dict[str, torch.Tensor]:
        """MPC state other than the plan to keep for the next ``act`` (none by default)."""
        return {}

    # ------------------------------------------------------------------ MPC
    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, goal: torch.Tensor, action_history: Optional[torch.Tensor] = None, latent: bool = False
    ) -> torch.Tensor:
        """One MPC step over B envs: plan (warm-started from the previous call's plan shifted by ``receding_horizon``)
        and return its first ``receding_horizon`` blocks (B, receding_horizon, A)."""
        emb_ctx, goal_emb = self.prepare(obs, goal, latent)
        b, h, _ = emb_ctx.shape
        carry = self._carry
        if carry is not None and carry["init_mean"].shape[0] != b:
            raise ValueError(f"act() got {b} envs but the previous call planned {carry['init_mean'].shape[0]}; call reset() first")
        hist, mean = self._check_actions(b, h, action_history, None if carry is None else carry["init_mean"])
        plan, _, extra = self._run(emb_ctx, hist, goal_emb, mean, False, carry)
        with persistent():  # the next act() (or reset()) may run outside torch.inference_mode()
            self._carry = {"init_mean": warm_start(plan, self.receding_horizon), **extra}
        return plan[:, : self.receding_horizon]

    def reseed(self, seed: int) -> None:
        """Restart the candidate noise stream at ``seed``: the next plans draw what a new planner built with
        ``seed=seed`` would (e.g. one stream per evaluation episode, whatever order the episodes run in)."""
        check_positive_int(seed, "seed", 0)
        if isinstance(self.noise, PhiloxNoise):
            self.noise.seed_buf.fill_(seed)  # in place: captured CUDA graphs read this buffer
        else:
            self.noise.generator = torch.Generator(device=self.device).manual_seed(seed)

    def reset(self, envs: Optional[torch.Tensor] = None) -> None:
        """Forget the warm start: all of it, or only for ``envs`` (indices or a (B,) bool mask) whose episode restarts."""
        if envs is None or self._carry is None:
            self._carry = None
            return
        for name, value in self._carry.items():
            value[envs] = self.COLD_CARRY[name]
