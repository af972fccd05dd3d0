"""Triton kernel warm-up: the specializations a plan (or a SIGReg training step) launches, recorded from the real code
paths on meta tensors, and compiled on the GPU before the first call.

Without it, the first plan of each new problem shape compiles every kernel it launches (see the README for what that
costs). ``warmup`` moves that to a moment of the caller's choosing and changes no planner state (no launch runs, the
noise stream and warm start are untouched). The ``record_*`` functions are also what the ahead-of-time compile checks
(``lewm_fast.aot``) compile, so both see exactly the launches the code makes. ``record_aten_ops`` adds the other
kernels (cuBLAS GEMMs, elementwise ops, copies) and ``record_plan_ops`` lists a plan's Triton and aten launches in order,
by phase and iteration: the launch lists of the GPU cost model (``bench/gpu_model.py``).
"""

from __future__ import annotations

import copy
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.utils._pytree as pytree
from torch import nn

from .ops.launches import H100_SM_COUNT, Launch, record_launches
from .planning.base import PlannerBase, default_planning_dtype

PLANNERS = ("cem", "mppi", "icem", "gd", "lagrangian", "predictive_sampling", "pgd", "categorical_cem")
SWM_PAIRED = ("cem", "mppi", "icem")  # the planners the stable-worldmodel adapter runs with history_pairing="swm"
GRADIENT = ("gd", "lagrangian", "pgd")  # planners whose steps run the rollout's backward
DISCRETE = ("pgd", "categorical_cem")  # planners over a discrete action set (``bins`` values per action entry)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no weight is copied)."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def _planner_class(name: str, history_pairing: str = "executed") -> type:
    """The planner class of ``name`` (``lewm-eval``'s ``planner.kind``); ``history_pairing="swm"``: the
    stable-worldmodel adapter's variant (of ``SWM_PAIRED``)."""
    from .integrations import stable_worldmodel as swm
    from . import planning

    classes = {"cem": planning.CEMPlanner, "mppi": planning.MPPIPlanner, "icem": planning.ICEMPlanner,
               "gd": planning.GradientPlanner, "lagrangian": planning.LagrangianPlanner,
               "predictive_sampling": planning.PredictiveSamplingPlanner, "pgd": planning.PGDPlanner,
               "categorical_cem": planning.CategoricalCEMPlanner}
    if name not in classes:
        raise ValueError(f"planner must be one of {PLANNERS}, got {name!r}")
    if history_pairing not in swm.HISTORY_PAIRINGS:
        raise ValueError(f"history_pairing must be one of {swm.HISTORY_PAIRINGS}, got {history_pairing!r}")
    if history_pairing == "executed":
        return classes[name]
    if name not in SWM_PAIRED:
        raise ValueError(f"history_pairing='swm' is the adapter's fused {SWM_PAIRED} planners, not {name!r}")
    solvers = {"cem": swm.CEMSolver, "mppi": swm.MPPISolver, "icem": swm.ICEMSolver}
    return solvers[name]._planners[history_pairing]


def _window(model: nn.Module) -> int:
    return int(model.predictor.pos_embedding.shape[1])


def _planner_kwargs(planner: str, action_dim: int, num_samples: int, topk: int, n_steps: int, horizon: int,
                    bins: int) -> dict:
    """Constructor arguments of ``planner`` that shape its launches (a Lagrangian planner: one outer round, whose
    steps the later rounds repeat; a discrete planner: ``bins`` values spanning [-1, 1] per action entry)."""
    kwargs: dict = dict(num_samples=num_samples, horizon=horizon, receding_horizon=horizon)
    if planner != "predictive_sampling":
        kwargs["n_steps"] = n_steps
    if planner in SWM_PAIRED + ("categorical_cem",):
        kwargs["topk"] = topk
    if planner == "lagrangian":
        kwargs["n_outer_steps"] = 1
    if planner in DISCRETE:
        kwargs.update(bins=bins, action_bounds=(-torch.ones(action_dim), torch.ones(action_dim)))
    return kwargs


def _meta_planner(model: nn.Module, n_steps: int, n_envs: int = 1, history: Optional[int] = None, planner: str = "cem",
                  num_samples: int = 300, topk: int = 30, horizon: int = 5, dtype: Optional[torch.dtype] = None,
                  history_pairing: str = "executed", precision: str = "ieee", bins: int = 3):
    """A Triton-backend planner on a meta copy of ``model`` and a meta context (n_envs, history, D) to plan from."""
    cls = _planner_class(planner, history_pairing)
    meta_model = meta_copy(model).eval()
    history = _window(model) if history is None else history
    kwargs = _planner_kwargs(planner, int(meta_model.action_dim), num_samples, topk, n_steps, horizon, bins)
    fast = cls(meta_model, backend="triton", dtype=dtype, seed=0, cuda_graph=False, precision=precision, **kwargs)
    return fast, torch.empty(n_envs, history, int(meta_model.predictor.pos_embedding.shape[-1]), device="meta")


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
    precision: str = "ieee",
    bins: int = 3,
) -> List[Launch]:
    """The Triton launches of one plan of ``planner`` (one of ``PLANNERS``) over ``n_envs`` environments with
    ``history`` context frames (default: the predictor's window); ``history_pairing="swm"``: as
    ``lewm_fast.integrations.stable_worldmodel``'s solvers plan; ``precision``: of float32 GEMMs (``RolloutEngine``);
    ``bins``: a discrete planner's values per action entry. Iterations (gradient steps) after the second repeat the
    second's launches, so two are run; a gradient planner's include the rollout's backward kernels."""
    fast, emb_ctx = _meta_planner(model, 2, n_envs=n_envs, history=history, planner=planner, num_samples=num_samples,
                                  topk=topk, horizon=horizon, dtype=dtype, history_pairing=history_pairing,
                                  precision=precision, bins=bins)
    with torch.no_grad(), record_launches(sm_count) as launches:
        buf = fast._new_buffers(emb_ctx)
        fast._load_carry(buf, None)
        fast._iterate(buf)
    return list(launches)


def record_gradient_launches(
    model: nn.Module,
    n_envs: int = 1,
    history: Optional[int] = None,
    num_samples: int = 300,
    horizon: int = 5,
    dtype: Optional[torch.dtype] = None,
    sm_count: int = H100_SM_COUNT,
    paired: bool = False,
) -> List[Launch]:
    """The Triton launches of one step of a gradient planner: ``RolloutEngine.costs`` (``paired``: ``paired_costs``,
    over ``horizon + history - 1`` actions) of ``num_samples`` candidates per env that require grad, and its
    backward, with ``history`` context frames (default: the predictor's window)."""
    from .planning import RolloutEngine

    meta_model = meta_copy(model).eval()
    engine = RolloutEngine(meta_model, backend="triton", dtype=dtype)
    history = _window(model) if history is None else history
    d, a = engine.latent_dim, engine.action_dim
    emb_ctx = torch.empty(n_envs, history, d, device="meta")
    goal = torch.empty(n_envs, d, device="meta")
    steps = horizon + history - 1 if paired else horizon
    candidates = torch.empty(n_envs, num_samples, steps, a, device="meta", requires_grad=True)
    with torch.enable_grad(), record_launches(sm_count) as launches:
        if paired:
            costs = engine.paired_costs(emb_ctx, goal, candidates)
        else:
            costs = engine.costs(emb_ctx, torch.empty(n_envs, history - 1, a, device="meta"), goal, candidates)
        costs.sum().backward()
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
    from .ops.sigreg import sigreg_sums_backward_triton, sigreg_sums_triton

    T, B, D, M = shape
    z = torch.empty(T, B, D, device="meta", dtype=dtype)
    A = torch.empty(D, M, device="meta")
    t = torch.empty(knots, device="meta")
    with record_launches(sm_count) as launches:
        sigreg_sums_triton(z, A, t)
        if backward:
            sigreg_sums_backward_triton(torch.empty(2, T, M, knots, device="meta"), z, A, t)
    return list(launches)


def record_refit_launches(
    shape: Tuple[int, int, int, int], topk: int, dtype: torch.dtype = torch.float32, sm_count: int = H100_SM_COUNT,
) -> List[Launch]:
    """The Triton launch of the ``elite_refit`` op on candidates (B, N, T, A) and costs (B, N) of ``dtype``."""
    from .ops.elite_refit import elite_refit

    b, n = shape[:2]
    with record_launches(sm_count) as launches:
        elite_refit(torch.empty(shape, device="meta", dtype=dtype), torch.empty(b, n, device="meta", dtype=dtype), topk,
                    backend="triton")
    return list(launches)


# ---------------------------------------------------------------------------------------------------- aten ops
# aten ops that launch no kernel on a CUDA device: views, allocation without fill, metadata
NO_KERNEL_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "unsqueeze", "unsqueeze_", "squeeze", "transpose", "t",
    "permute", "expand", "as_strided", "slice", "select", "detach", "alias", "unflatten", "flatten", "split",
    "split_with_sizes", "chunk", "unbind", "view_as", "empty", "empty_like", "new_empty", "empty_strided",
    "new_empty_strided", "lift_fresh", "is_same_size", "sym_size", "sym_stride", "sym_numel", "dim", "size", "stride",
    "_local_scalar_dense", "set_", "resize_", "_has_compatible_shallow_copy_type",
})


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype and layout of one tensor argument or result of a recorded op."""

    shape: Tuple[int, ...]
    dtype: torch.dtype
    contiguous: bool

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorMeta":
        return cls(tuple(t.shape), t.dtype, t.is_contiguous())


@dataclass(frozen=True)
class AtenOp:
    """One aten op as dispatched: ``name`` is its overload packet (``"addmm"``, ``"gelu"``); ``scalars`` its
    non-tensor positional arguments. ``triton_launches_before`` counts the Triton launches recorded by the enclosing
    ``record_launches`` before it (None outside one), which orders the two lists (``interleave``). Two pseudo-ops
    stand for what a CUDA device does in one piece: ``scaled_dot_product_attention`` (one fused attention kernel; the
    meta device decomposes it) and ``device_to_host`` (a host read of a device tensor: ``item``, ``tolist``, ``cpu``,
    ``bool``, ``numpy``: a copy and a host sync; the host sees ones)."""

    name: str
    inputs: Tuple[TensorMeta, ...]
    outputs: Tuple[TensorMeta, ...]
    scalars: Tuple[Any, ...] = ()
    triton_launches_before: Optional[int] = None

    @property
    def launches_kernel(self) -> bool:
        """Whether it launches a device kernel (views and allocations do not; ``device_to_host`` is a copy)."""
        return self.name not in NO_KERNEL_OPS


class AtenRecorder(List[AtenOp]):
    """The aten ops recorded inside ``record_aten_ops``; ``paused()`` stops recording for a block."""

    def __init__(self, launches: Optional[Sequence[Launch]] = None) -> None:
        super().__init__()
        self._paused = 0
        self._launches = launches

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def add(self, name: str, args: Sequence[Any], outputs: Any) -> None:
        def tensors(xs: Any) -> Tuple[TensorMeta, ...]:
            flat = pytree.tree_leaves(xs)
            return tuple(TensorMeta.of(x) for x in flat if isinstance(x, torch.Tensor))

        scalars = tuple(a for a in args if isinstance(a, (bool, int, float, str)))
        self.append(AtenOp(name, tensors(list(args)), tensors(outputs), scalars,
                           None if self._launches is None else len(self._launches)))


_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__")


def _aten_modes(recorder: AtenRecorder):
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    fused = {torch.nn.functional.scaled_dot_product_attention: "scaled_dot_product_attention"}
    host_reads = {getattr(torch.Tensor, name): name for name in _HOST_READS}

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if recorder._paused:
                return func(*args, **kwargs)
            if func in fused:
                with recorder.paused():
                    out = func(*args, **kwargs)
                recorder.add(fused[func], list(args) + list(kwargs.values()), out)
                return out
            name = host_reads.get(func)
            if name is not None and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
                t = args[0]
                recorder.add("device_to_host", [t], ())
                with recorder.paused():
                    host = torch.ones(t.shape, dtype=t.dtype)  # a stand-in value that passes finiteness checks
                return host if name == "cpu" else getattr(host, name)()
            return func(*args, **kwargs)

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            composite = torch._C.DispatchKey.CompositeImplicitAutograd
            if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), composite):
                # reached undecomposed (under torch.inference_mode()): run ATen's C++ decomposition, as a CUDA device
                # does (the Python ones may differ: eval-mode dropout clones there, and is the identity in ATen)
                run_composite = getattr(func, "_op_dk", None)
                with self:
                    if run_composite is not None:
                        return run_composite(composite, *args, **kwargs)
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if not recorder._paused:
                recorder.add(func.overloadpacket.__name__, list(args) + list(kwargs.values()), out)
            return out

    return Functions(), Dispatch()


@contextmanager
def record_aten_ops(launches: Optional[Sequence[Launch]] = None) -> Iterator[AtenRecorder]:
    """Within this block every aten op that runs is appended to the yielded list (``AtenOp``: name, tensor shapes and
    dtypes), whether or not it launches a kernel (``AtenOp.launches_kernel``). Meant for meta tensors, with
    ``record_launches`` for the Triton side: together they list every kernel a code path would launch on a GPU; pass
    its recorder as ``launches`` to order the two (``AtenOp.triton_launches_before``, ``interleave``)."""
    recorder = AtenRecorder(launches)
    functions, dispatch = _aten_modes(recorder)
    with functions, dispatch:
        yield recorder


def interleave(launches: Sequence[Launch], ops: Sequence[AtenOp]) -> List[Union[Launch, AtenOp]]:
    """Triton launches and aten ops recorded together, in the order they ran."""
    out: List[Union[Launch, AtenOp]] = []
    i = 0
    for op in ops:
        upto = len(launches) if op.triton_launches_before is None else op.triton_launches_before
        out.extend(launches[i:upto])
        i = max(i, upto)
        out.append(op)
    out.extend(launches[i:])
    return out


def record_plan_ops(
    model: nn.Module, n_steps: int = 3, sm_count: int = H100_SM_COUNT, shared_memory: Optional[int] = None, **plan: Any
) -> List[Tuple[str, Union[Launch, AtenOp]]]:
    """Every op of one plan's device work (what a captured CUDA graph holds), in order: Triton launches and aten ops,
    each with its phase: ``"prepare"`` (the context-only part of the rollout), ``"init"`` (first sampling),
    ``"iter<i>"`` (iteration i: its costs, then its refit / sampling of the next candidates) and ``"end"``. ``plan``:
    the plan's settings as ``record_plan_launches`` takes them (n_envs, history, planner, num_samples, topk, horizon,
    dtype, history_pairing, precision); ``n_steps`` iterations (iterations after the first are alike but for the last,
    which only refits). Buffer allocation before the plan is left out; so is the host side of ``plan`` (input checks
    and copies, the divergence check). ``sm_count`` / ``shared_memory``: the GPU the kernels are tiled for
    (``record_launches``)."""
    fast, emb_ctx = _meta_planner(model, n_steps, **plan)
    phases: List[Tuple[int, int, str]] = []  # (Triton launches, aten ops) recorded when each phase began
    with torch.no_grad(), record_launches(sm_count, shared_memory) as launches:
        buf = fast._new_buffers(emb_ctx)
        fast._load_carry(buf, None)
        with record_aten_ops(launches) as ops:

            def mark(name: str) -> None:
                phases.append((len(launches), len(ops), name))

            def marked(name: Callable[[], str], fn: Callable) -> Callable:
                def run(*args: Any, **kwargs: Any) -> Any:
                    mark(name())
                    return fn(*args, **kwargs)
                return run

            iteration = itertools.count()
            fast._loop = marked(lambda: "init", fast._loop)  # after the plan's context work (if any), in _iterate
            fast.loop_costs = marked(lambda: f"iter{next(iteration)}", fast.loop_costs)
            fast.advance_noise_ = marked(lambda: "end", fast.advance_noise_)
            mark("prepare")
            fast._iterate(buf)
    out: List[Tuple[str, Union[Launch, AtenOp]]] = []
    bounds = phases + [(len(launches), len(ops), "")]
    for (l0, o0, name), (l1, o1, _) in zip(bounds, bounds[1:]):
        events = interleave(launches[l0:l1], [_shifted(op, -l0) for op in ops[o0:o1]])
        out.extend((name, e) for e in events)
    return out


def _shifted(op: AtenOp, by: int) -> AtenOp:
    if op.triton_launches_before is None:
        return op
    return AtenOp(op.name, op.inputs, op.outputs, op.scalars, op.triton_launches_before + by)


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


def _planner_settings(target: PlannerBase) -> dict:
    """``record_plan_launches`` settings of the planner ``target`` (TypeError for a class warmup does not know)."""
    kinds = [(name, pairing) for name in PLANNERS for pairing in ("executed", "swm")
             if pairing == "executed" or name in SWM_PAIRED]
    kind = next((k for k in kinds if type(target) is _planner_class(*k)), None)
    if kind is None:
        raise TypeError(f"warmup knows the planners {PLANNERS} (and IDMPolicy), got {type(target).__name__}")
    settings = dict(planner=kind[0], history_pairing=kind[1], num_samples=target.num_samples, topk=target.topk,
                    horizon=target.horizon, dtype=target.engine.dtype, precision=target.engine.precision)
    if kind[0] in DISCRETE:
        settings["bins"] = target.bins  # type: ignore[attr-defined]
    return settings


def _warmup_target(target: Any, planner_settings: dict) -> Tuple[nn.Module, Optional[dict]]:
    """-> (the model, ``record_plan_launches`` settings, or None when the target's plans launch no Triton kernel);
    TypeError for a target or settings warmup does not take."""
    from .planning.idm import IDMPolicy

    if isinstance(target, (PlannerBase, IDMPolicy)):
        if planner_settings:
            raise TypeError(f"planner settings come from the planner; got extra {sorted(planner_settings)}")
        if isinstance(target, IDMPolicy):  # plain PyTorch (the IDM, the model's own predictor)
            return target.model, None
        return target.model, _planner_settings(target)
    if isinstance(target, nn.Module):
        unknown = set(planner_settings) - {"planner", "num_samples", "topk", "horizon", "dtype", "precision", "bins"}
        if unknown:
            raise TypeError(f"unknown planner settings {sorted(unknown)}")
        return target, dict(planner_settings)
    raise TypeError(f"target must be a planner or a LeWM module, got {type(target).__name__}")


def warmup_launches(
    target: Union[PlannerBase, nn.Module],
    n_envs: Union[int, Sequence[int]] = 1,
    history: Optional[int] = None,
    sigreg: Sequence[Tuple[int, int, int, int]] = (),
    sm_count: Optional[int] = None,
    **planner_settings: Any,
) -> List[Launch]:
    """The Triton launches ``warmup`` compiles (same arguments), recorded on meta tensors: on any device, nothing
    runs. ``sm_count``: of the GPU to size grids for (default: the model's CUDA device, else an H100's)."""
    model, planner_settings = _warmup_target(target, planner_settings)
    device = next(model.parameters()).device
    if sm_count is None:
        sm_count = (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda"
                    else H100_SM_COUNT)
    launches: List[Launch] = []
    if planner_settings is not None:
        if planner_settings.get("dtype") is None:  # what a planner built with these settings would roll out in
            planner_settings["dtype"] = default_planning_dtype(device, "triton",
                                                               planner_settings.get("precision", "ieee"))
        for n in [n_envs] if isinstance(n_envs, int) else list(n_envs):
            launches += record_plan_launches(model, n, history, sm_count=sm_count, **planner_settings)
    for shape in sigreg:
        for dtype in (torch.float32, torch.bfloat16):
            launches += record_sigreg_launches(tuple(shape), dtype=dtype, sm_count=sm_count)
    return launches


def warmup(
    target: Union[PlannerBase, nn.Module],
    n_envs: Union[int, Sequence[int]] = 1,
    history: Optional[int] = None,
    sigreg: Sequence[Tuple[int, int, int, int]] = (),
    **planner_settings: Any,
) -> WarmupReport:
    """Compile, before the first plan, the Triton kernels that plans over ``n_envs`` environments (an int or several)
    with ``history`` context frames will launch (``warmup_launches`` lists them).

    ``target``: a planner of any ``lewm-eval`` kind (its model, class, ``num_samples``, ``topk``, ``horizon``, rollout
    dtype and precision, and a discrete planner's ``bins``, are used; a gradient planner's launches include the
    rollout's backward kernels; the planner of a ``lewm_fast.integrations.stable_worldmodel`` sampling solver is
    ``solver.planner``; an ``IDMPolicy`` launches none) or a LeWM (then ``planner_settings`` may give ``planner``
    (one of ``PLANNERS``), ``num_samples``, ``topk``, ``horizon``, ``dtype``, ``precision``, ``bins``; defaults: CEM,
    300, 30, 5, a planner's default dtype (bf16 on CUDA), "ieee", 3). ``sigreg``: (T, B, D, M) shapes of SIGReg
    training steps to compile too (forward and backward, float32 and bfloat16 inputs). Nothing runs on the device and no
    planner state changes. On a CPU model nothing needs compiling and the report says 0.
    """
    model, _ = _warmup_target(target, planner_settings)
    device = next(model.parameters()).device
    if device.type != "cuda":
        return WarmupReport(0, 0.0, str(device))
    launches = warmup_launches(target, n_envs, history, sigreg, **planner_settings)
    start = time.perf_counter()
    count = compile_launches(launches, device)
    return WarmupReport(count, time.perf_counter() - start, torch.cuda.get_device_name(device))
