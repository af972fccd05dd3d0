"""Triton kernel warm-up: the specializations a plan (or a SIGReg training step) launches, recorded from the real code
paths on meta tensors, and compiled on the GPU before the first call.

Without it, the first plan of each new problem shape compiles every kernel it launches (see the README for what that
costs). ``warmup`` moves that to a moment of the caller's choosing and changes no planner state (no launch runs, the
noise stream and warm start are untouched). The ``record_*`` functions are also what the ahead-of-time compile checks
(``lewm_fast.aot``) compile, so both see exactly the launches the code makes.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .kernels._launch import H100_SM_COUNT, Launch, record_launches
from .planning.base import PlannerBase

PLANNERS = ("cem", "mppi", "icem")


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no weight is copied)."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def _planner_class(name: str, history_pairing: str = "executed") -> type:
    """The planner class of ``name``; ``history_pairing="swm"``: the stable-worldmodel adapter's variant."""
    from .integrations import stable_worldmodel as swm
    from .planning import CEMPlanner, ICEMPlanner, MPPIPlanner

    solvers = {"cem": swm.CEMSolver, "mppi": swm.MPPISolver, "icem": swm.ICEMSolver}
    if name not in solvers:
        raise ValueError(f"planner must be one of {PLANNERS}, got {name!r}")
    if history_pairing not in swm.HISTORY_PAIRINGS:
        raise ValueError(f"history_pairing must be one of {swm.HISTORY_PAIRINGS}, got {history_pairing!r}")
    return solvers[name]._planners[history_pairing]


def _window(model: nn.Module) -> int:
    return int(model.predictor.pos_embedding.shape[1])


def record_plan_launches(
    model: nn.Module,
    n_envs: int = 1,
    history: Optional[int] = None,
    planner: str = "cem",
    num_samples: int = 300,
    topk: int = 30,
    horizon: int = 5,
    dtype: Optional[torch.dtype] = None,
    sm_count: int = H100_SM_COUNT,
    history_pairing: str = "executed",
) -> List[Launch]:
    """The Triton launches of one plan of ``planner`` over ``n_envs`` environments with ``history`` context frames
    (default: the predictor's window); ``history_pairing="swm"``: as ``lewm_fast.integrations.stable_worldmodel``'s
    solvers plan. Iterations after the second repeat the second's launches, so two are run."""
    meta_model = meta_copy(model).eval()
    history = _window(model) if history is None else history
    fast = _planner_class(planner, history_pairing)(
        meta_model, num_samples=num_samples, topk=topk, n_steps=2, horizon=horizon, receding_horizon=horizon,
        backend="triton", dtype=dtype, seed=0, cuda_graph=False,
    )
    emb_ctx = torch.empty(n_envs, history, int(meta_model.predictor.pos_embedding.shape[-1]), device="meta")
    with torch.no_grad(), record_launches(sm_count) as launches:
        buf = fast._new_buffers(emb_ctx)
        fast._load_carry(buf, None)
        fast._iterate(buf)
    return list(launches)


def record_predict_launches(
    model: nn.Module, batch: int, frames: Optional[int] = None, dtype: Optional[torch.dtype] = None,
    sm_count: int = H100_SM_COUNT,
) -> List[Launch]:
    """The Triton launches of ``accelerate(model).predict`` on (batch, frames) latents (default: the full window)."""
    from .planning import RolloutEngine

    meta_model = meta_copy(model).eval()
    engine = RolloutEngine(meta_model, backend="triton", dtype=dtype)
    frames = _window(model) if frames is None else frames
    emb = torch.empty(batch, frames, engine.latent_dim, device="meta")
    with record_launches(sm_count) as launches:
        engine.predict(emb, emb)
    return list(launches)


def record_sigreg_launches(
    shape: Tuple[int, int, int, int], knots: int = 17, dtype: torch.dtype = torch.float32, backward: bool = True,
    sm_count: int = H100_SM_COUNT,
) -> List[Launch]:
    """The Triton launches of SIGReg (forward, and backward when asked) on z (T, B, D) of ``dtype`` and M projections:
    ``shape`` = (T, B, D, M)."""
    from .kernels.sigreg import sigreg_sums, sigreg_sums_backward

    T, B, D, M = shape
    z = torch.empty(T, B, D, device="meta", dtype=dtype)
    A = torch.empty(D, M, device="meta")
    t = torch.empty(knots, device="meta")
    with record_launches(sm_count) as launches:
        sigreg_sums(z, A, t)
        if backward:
            sigreg_sums_backward(torch.empty(2, T, M, knots, device="meta"), z, A, t)
    return list(launches)


def record_refit_launches(
    shape: Tuple[int, int, int, int], topk: int, dtype: torch.dtype = torch.float32, sm_count: int = H100_SM_COUNT,
) -> List[Launch]:
    """The Triton launch of the ``elite_refit`` op on candidates (B, N, T, A) and costs (B, N) of ``dtype``."""
    from .kernels.cem_refit import elite_refit_triton

    b, n = shape[:2]
    with record_launches(sm_count) as launches:
        elite_refit_triton(torch.empty(shape, device="meta", dtype=dtype), torch.empty(b, n, device="meta", dtype=dtype), topk)
    return list(launches)


@dataclass
class WarmupReport:
    """What ``warmup`` did: the recorded kernel launches it compiled for (each autotune config counted; launches of an
    already-compiled specialization are cache hits), and the seconds it took."""

    launches: int
    seconds: float
    device: str

    def __str__(self) -> str:
        return f"compiled for {self.launches} Triton kernel launches on {self.device} in {self.seconds:.1f} s"


def compile_launches(launches: Iterable[Launch], device: torch.device) -> int:
    """Compile (without running) every launch for the CUDA ``device``; each autotune config of an autotuned kernel
    too. Returns how many (launch, config) pairs that was, cache hits included."""
    count = 0
    with torch.cuda.device(device):
        for spec in launches:
            for fn, kwargs in spec.variants():
                fn.warmup(*spec.args, grid=spec.grid, **kwargs)
                count += 1
    return count


def warmup(
    target: Union[PlannerBase, nn.Module],
    n_envs: Union[int, Sequence[int]] = 1,
    history: Optional[int] = None,
    sigreg: Sequence[Tuple[int, int, int, int]] = (),
    **planner_settings,
) -> WarmupReport:
    """Compile, before the first plan, the Triton kernels that plans over ``n_envs`` environments (an int or several)
    with ``history`` context frames will launch.

    ``target``: a planner (its model, class, ``num_samples``, ``topk``, ``horizon`` and rollout dtype are used; the
    planner of a ``lewm_fast.integrations.stable_worldmodel`` solver is ``solver.planner``) or a
    LeWM (then ``planner_settings`` may give ``planner`` ("cem" | "mppi" | "icem"), ``num_samples``, ``topk``,
    ``horizon``, ``dtype``; defaults: CEM, 300, 30, 5, float32). ``sigreg``: (T, B, D, M) shapes of SIGReg training
    steps to compile too (forward and backward, float32 and bfloat16 inputs). Nothing runs on the device and no
    planner state changes. On a CPU model nothing needs compiling and the report says 0.
    """
    if isinstance(target, PlannerBase):
        if planner_settings:
            raise TypeError(f"planner settings come from the planner; got extra {sorted(planner_settings)}")
        kinds = [(name, pairing) for name in PLANNERS for pairing in ("executed", "swm")]
        kind = next((k for k in kinds if type(target) is _planner_class(*k)), None)
        if kind is None:
            raise TypeError(f"warmup knows the planners {PLANNERS}, got {type(target).__name__}")
        model = target.model
        planner_settings = dict(planner=kind[0], history_pairing=kind[1], num_samples=target.num_samples,
                                topk=target.topk, horizon=target.horizon, dtype=target.engine.dtype)
    elif isinstance(target, nn.Module):
        model = target
        unknown = set(planner_settings) - {"planner", "num_samples", "topk", "horizon", "dtype"}
        if unknown:
            raise TypeError(f"unknown planner settings {sorted(unknown)}")
    else:
        raise TypeError(f"target must be a planner or a LeWM module, got {type(target).__name__}")
    envs = [n_envs] if isinstance(n_envs, int) else list(n_envs)
    device = next(model.parameters()).device
    if device.type != "cuda":
        return WarmupReport(0, 0.0, str(device))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    launches: List[Launch] = []
    for n in envs:
        launches += record_plan_launches(model, n, history, sm_count=sms, **planner_settings)
    for shape in sigreg:
        for dtype in (torch.float32, torch.bfloat16):
            launches += record_sigreg_launches(tuple(shape), dtype=dtype, sm_count=sms)
    start = time.perf_counter()
    count = compile_launches(launches, device)
    return WarmupReport(count, time.perf_counter() - start, torch.cuda.get_device_name(device))
