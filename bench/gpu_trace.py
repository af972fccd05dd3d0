"""Kernel launch lists of CEM plans, traced from the real code on meta tensors: the input of ``bench/gpu_model.py``.

* lewm_fast: ``lewm_fast.precompile.record_plan_ops`` runs the planner's loop (``CEMPlanner`` or the stable-worldmodel
  adapter's ``history_pairing="swm"`` planner) on meta tensors and lists every Triton launch (kernel, grid,
  constexprs, arguments) and every aten op (cuBLAS GEMMs, elementwise, copies; views and allocations dropped) in order.
* stable-worldmodel: its eager ``CEMSolver.solve`` loop and ``LeWM.get_cost`` as the test suite's stand-ins reproduce
  them (``tests/swm_solver_standins.py``, ``tests/swm_standins.py``; stable-worldmodel itself is never imported), run
  on meta tensors under ``lewm_fast.precompile.record_aten_ops``. The stand-ins re-encode the context and goal frames
  with the ViT in every ``get_cost`` call, as stable-worldmodel's ``LeWM.rollout`` / ``get_cost`` do in the versions
  that do not cache ``info["emb"]``; those launches are tagged ``part="encode"`` so that they can be counted apart.
* lewm_fast's eager reference planner (``lewm_fast.reference.CEMSolver``), which the plan benchmark also measures.

Each gives a ``Trace``: its launches by phase and ``counts()`` per steady CEM iteration (``launches_per_iteration``,
``triton_per_iteration``, ``aten_per_iteration``, ``syncs_per_iteration``) and per plan of 30 iterations.

Counting rules: one aten op = one kernel, except views / allocations (no kernel) and two pseudo-ops: scaled dot-product
attention is one fused kernel (flash / memory-efficient on CUDA; the meta device decomposes it), and a host read of a
device tensor (``.tolist()``, ``.cpu()``, ``bool()``) is a device-to-host copy plus a host sync (kind ``"sync"``, not
counted as a kernel launch). What CUDA libraries may add is not counted (a cuBLAS split-K reduction, topk's sort pass,
cuDNN's conv pre-/post-processing).
"""

from __future__ import annotations

import collections
import functools
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Counter, Dict, Iterable, List, Optional, Tuple

import torch

import lewm_fast
from lewm_fast.precompile import AtenOp, record_aten_ops, record_plan_ops

REPO = Path(__file__).resolve().parents[1]
PLAN = dict(num_samples=300, topk=30, horizon=5, n_steps=30)  # configs/eval/planner/cem.yaml
TRACED_STEPS = 3  # iterations traced; iteration 1 is the steady one (0 is alike, the last only refits)


def tiny_config_overrides() -> Dict[str, Any]:
    """The test suite's tiny model sizes (``TINY_CONFIG``), wherever the package keeps them."""
    for name in ("lewm_fast.io", "lewm_fast.config", "lewm_fast.io.build", "lewm_fast.checkpoint"):
        try:
            return dict(importlib.import_module(name).TINY_CONFIG)
        except (ImportError, AttributeError):
            continue
    raise ImportError("TINY_CONFIG not found in lewm_fast")


@dataclass(frozen=True)
class Event:
    """One kernel launch (kind ``"triton"`` or ``"aten"``) or host sync (kind ``"sync"``) of a traced plan."""

    phase: str  # "prepare", "init", "iter<i>", "end" (lewm_fast); "iter<i>", "end" (stable-worldmodel)
    kind: str
    name: str
    launch: Any = None  # lewm_fast.kernels._launch.Launch for Triton
    op: Optional[AtenOp] = None  # aten op (also the sync's D2H copy)
    part: str = ""  # "encode": stable-worldmodel's per-iteration ViT encoding

    @property
    def is_kernel(self) -> bool:
        return self.kind in ("triton", "aten")


@dataclass
class Trace:
    """The launches of one traced plan (``TRACED_STEPS`` iterations) and what a plan of ``n_steps`` iterations makes
    of them. ``captured``: the plan runs as one replayed CUDA graph on a GPU."""

    label: str
    impl: str  # "lewm_fast", "lewm_fast swm-adapter", "swm eager"
    n_envs: int
    history: int
    dtype: str
    captured: bool
    events: List[Event]
    n_steps: int = PLAN["n_steps"]
    notes: List[str] = field(default_factory=list)

    # ------------------------------------------------------------------ structure
    def phase(self, name: str) -> List[Event]:
        return [e for e in self.events if e.phase == name]

    @property
    def iteration(self) -> List[Event]:
        """The kernel launches and syncs of one steady CEM iteration (iteration 1)."""
        return self.phase("iter1")

    @property
    def launches_per_iteration(self) -> int:
        """Kernel launches (Triton + aten) per steady CEM iteration."""
        return sum(e.is_kernel for e in self.iteration)

    @property
    def triton_per_iteration(self) -> Counter[str]:
        return collections.Counter(e.name for e in self.iteration if e.kind == "triton")

    @property
    def aten_per_iteration(self) -> Counter[str]:
        return collections.Counter(e.name for e in self.iteration if e.kind == "aten")

    @property
    def syncs_per_iteration(self) -> int:
        return sum(e.kind == "sync" for e in self.iteration)

    @property
    def encode_launches_per_iteration(self) -> int:
        return sum(e.is_kernel and e.part == "encode" for e in self.iteration)

    def plan_multiplicity(self) -> List[Tuple[Event, int]]:
        """(event, how often a plan of ``n_steps`` iterations runs it): the steady iteration stands for the
        ``n_steps - TRACED_STEPS`` untraced ones."""
        extra = self.n_steps - TRACED_STEPS
        return [(e, 1 + (extra if e.phase == "iter1" else 0)) for e in self.events]

    @property
    def launches_per_plan(self) -> int:
        return sum(n for e, n in self.plan_multiplicity() if e.is_kernel)

    def counts(self) -> Dict[str, Any]:
        """The structural facts: launches per iteration and per plan, by kernel / op."""
        return {
            "launches_per_iteration": self.launches_per_iteration,
            "triton_per_iteration": dict(sorted(self.triton_per_iteration.items())),
            "aten_per_iteration": dict(sorted(self.aten_per_iteration.items())),
            "syncs_per_iteration": self.syncs_per_iteration,
            "encode_launches_per_iteration": self.encode_launches_per_iteration,
            "launches_by_phase": dict(collections.Counter(e.phase for e in self.events if e.is_kernel)),
            "launches_per_plan": self.launches_per_plan,
            "n_steps": self.n_steps,
        }


def _events_of(ops: Iterable[Tuple[str, Any]], part_of=lambda i: "") -> List[Event]:
    out = []
    for i, (phase, item) in enumerate(ops):
        if isinstance(item, AtenOp):
            if item.name == "device_to_host":
                out.append(Event(phase, "sync", item.name, op=item, part=part_of(i)))
            elif item.launches_kernel:
                out.append(Event(phase, "aten", item.name, op=item, part=part_of(i)))
        else:
            out.append(Event(phase, "triton", item.name, launch=item, part=part_of(i)))
    return out


# ---------------------------------------------------------------------------------------------------- lewm_fast
@functools.lru_cache(maxsize=None)
def _meta_model(overrides: Tuple[Tuple[str, Any], ...]) -> torch.nn.Module:
    with torch.device("meta"):
        return lewm_fast.build_model(lewm_fast.default_config(**dict(overrides))).eval()


def _dtype_name(dtype: Optional[torch.dtype], precision: str = "ieee") -> str:
    """"float32", "bfloat16", or "tf32" / "tf32x3" for float32 with those tensor-core dots."""
    name = str(dtype or torch.float32).replace("torch.", "")
    return precision if (name == "float32" and precision != "ieee") else name


def trace_plan(
    n_envs: int = 1, history: int = 1, dtype: Optional[torch.dtype] = torch.float32, history_pairing: str = "executed",
    config: Optional[Dict[str, Any]] = None, num_samples: int = PLAN["num_samples"], topk: int = PLAN["topk"],
    horizon: int = PLAN["horizon"], n_steps: int = PLAN["n_steps"], sm_count: int = 132, precision: str = "ieee",
    shared_memory: Optional[int] = None,
) -> Trace:
    """lewm_fast's CEM plan (``CEMPlanner``; ``history_pairing="swm"``: the stable-worldmodel adapter's planner) over
    ``n_envs`` envs with ``history`` context frames, on the model of ``default_config(**config)`` (the paper model by
    default). ``sm_count`` / ``shared_memory``: the GPU whose tiles and grids the kernels take (132, None: H100);
    ``precision``: of float32 dots."""
    config = {"action_dim": 2, **(config or {})}
    model = _meta_model(tuple(sorted(config.items())))
    ops = record_plan_ops(model, TRACED_STEPS, sm_count, shared_memory, n_envs=n_envs, history=history, planner="cem",
                          num_samples=num_samples, topk=topk, horizon=horizon, dtype=dtype,
                          history_pairing=history_pairing, precision=precision)
    swm = history_pairing == "swm"
    captured = True  # every lewm_fast plan, the adapter's at any history too, replays one CUDA graph on CUDA
    impl = "lewm_fast swm-adapter" if swm else "lewm_fast"
    mode = _dtype_name(dtype, precision)
    label = f"{impl} envs={n_envs} H={history} {mode}"
    return Trace(label, impl, n_envs, history, mode, captured, _events_of(ops), n_steps)


# ---------------------------------------------------------------------------------------------------- stable-worldmodel
def _standins():
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("swm_solver_standins"), importlib.import_module("swm_standins")


def trace_swm(
    n_envs: int = 1, history: int = 1, config: Optional[Dict[str, Any]] = None,
    num_samples: int = PLAN["num_samples"], topk: int = PLAN["topk"], horizon: int = PLAN["horizon"],
    n_steps: int = PLAN["n_steps"],
) -> Trace:
    """stable-worldmodel's eager CEM (``CEMSolver.solve`` on ``n_envs`` envs in one chunk, and ``LeWM.get_cost``;
    float32 as shipped) with ``history`` context frames, through the test suite's stand-ins, on the model of
    ``default_config(**config)``. Steady iteration = iteration 1.

    Use ``n_envs=1``: stable-worldmodel solves ``batch_size`` envs per chunk (default 1), and its ``criterion``
    broadcasts the (B, 1, D) goal embedding against the (B, S, T, D) predictions with ``expand_as``, which fails for
    1 < B != S (the stand-in reproduces it; so does ``LeWM.criterion`` in galilai-group/stable-worldmodel
    ``stable_worldmodel/wm/lewm/lewm.py`` at 404b7f7). n envs are n one-env solves."""
    S, SW = _standins()
    cfg = lewm_fast.default_config(**{"action_dim": 2, **(config or {})})
    pred, enc = cfg["predictor"], cfg["encoder"]
    action_dim = cfg["action_encoder"]["input_dim"]
    with torch.device("meta"):
        encoder = lewm_fast.build_model(cfg).encoder  # lewm_fast's ViT: HuggingFace ViTModel's layers and forward
        standin = SW.build_standin(encoder, action_dim=action_dim, latent=pred["input_dim"], depth=pred["depth"],
                                   heads=pred["heads"], dim_head=pred["dim_head"], mlp_dim=pred["mlp_dim"],
                                   proj_hidden=cfg["pred_proj"]["hidden_dim"], frames=pred["num_frames"])
        model = S.CostableLeWM(*[getattr(standin, name) for name in
                                 ("encoder", "predictor", "action_encoder", "projector", "pred_proj")]).eval()
    solver = S.CEMSolver(model, batch_size=n_envs, num_samples=num_samples, n_steps=TRACED_STEPS,
                         topk=topk, device="cpu", seed=0)
    solver.device = torch.device("meta")  # its torch.Generator stays on the CPU: the meta device has none
    solver.configure(action_space=S.BoxSpace((n_envs, action_dim)), n_envs=n_envs,
                     config=S.PlanConfig(horizon=horizon, receding_horizon=horizon, action_block=1))
    side = enc.get("image_size", 224)
    info = {"pixels": torch.empty(n_envs, history, 3, side, side, device="meta"),
            "goal": torch.empty(n_envs, 1, 3, side, side, device="meta"),
            "action": torch.empty(n_envs, history, action_dim, device="meta")}

    # phases: iteration i ends with the solver's i-th elite update; the ViT calls are tagged "encode"
    marks: List[Tuple[str, int]] = []
    update, encode = solver.update, model.encode

    def counted_update(*args, **kwargs):
        out = update(*args, **kwargs)
        marks.append(("update", len(ops)))
        return out

    def tagged_encode(*args, **kwargs):
        marks.append(("encode+", len(ops)))
        try:
            return encode(*args, **kwargs)
        finally:
            marks.append(("encode-", len(ops)))

    solver.update, model.encode = counted_update, tagged_encode
    with record_aten_ops() as ops:
        solver.solve(info)
    phases, parts = [], []
    ends = iter([n for kind, n in marks if kind == "update"])
    spans = [(a, b) for (ka, a), (kb, b) in zip(marks, marks[1:]) if ka == "encode+" and kb == "encode-"]
    bound, k = next(ends, len(ops)), 0
    for i in range(len(ops)):
        while i >= bound:
            k, bound = k + 1, next(ends, len(ops) + 1)
        phases.append(f"iter{k}" if k < TRACED_STEPS else "end")
        parts.append("encode" if any(a <= i < b for a, b in spans) else "")
    events = _events_of(zip(phases, ops), part_of=lambda i: parts[i])
    label = f"swm eager envs={n_envs} H={history} float32"
    trace = Trace(label, "swm eager", n_envs, history, "float32", False, events, n_steps)
    trace.notes.append(f"{trace.encode_launches_per_iteration} of its launches per iteration re-encode the "
                       "context + goal frames with the ViT (get_cost / rollout call encode every iteration)")
    return trace


# ---------------------------------------------------------------------------------------------------- reference
def trace_reference(
    n_envs: int = 1, history: int = 3, config: Optional[Dict[str, Any]] = None, num_samples: int = PLAN["num_samples"],
    topk: int = PLAN["topk"], horizon: int = PLAN["horizon"], n_steps: int = PLAN["n_steps"],
) -> Trace:
    """lewm_fast's eager reference planner (``lewm_fast.reference.CEMSolver``, float32, latent inputs), which
    ``bench/test_bench_plan.py`` measures as ``reference``: iteration i = its costs, elite refit (with its finiteness
    sync) and the next sampling. Steady iteration = iteration 1."""
    from lewm_fast.reference import CEMSolver

    config = {"action_dim": 2, **(config or {})}
    model = _meta_model(tuple(sorted(config.items())))
    solver = CEMSolver(model, num_samples=num_samples, topk=topk, n_steps=TRACED_STEPS, horizon=horizon,
                       receding_horizon=horizon)
    d = int(model.predictor.pos_embedding.shape[-1])
    ctx = torch.empty(n_envs, history, d, device="meta")
    goal = torch.empty(n_envs, d, device="meta")
    starts: List[int] = []
    costs = solver.costs

    def marked_costs(*args, **kwargs):
        starts.append(len(ops))
        return costs(*args, **kwargs)

    solver.costs = marked_costs
    with torch.no_grad(), record_aten_ops() as ops:
        solver.plan(ctx, goal, latent=True)
    phases = [sum(i >= s for s in starts) for i in range(len(ops))]
    events = _events_of((("init" if k == 0 else f"iter{k - 1}"), op) for k, op in zip(phases, ops))
    label = f"lewm_fast reference envs={n_envs} H={history} float32"
    return Trace(label, "lewm_fast reference", n_envs, history, "float32", False, events, n_steps)
