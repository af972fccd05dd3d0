"""CEM / MPPI / iCEM planners (lewm_fast.planning) against the reference CEMSolver, on a tiny random LeWM.

CPU planners consume the random stream like the reference, so seeded plans match it (bitwise with the reference
rollout engine, to fp tolerance with the fused CPU engine). The Triton path runs under TRITON_INTERPRET=1: it is
checked against a step-by-step replay of the same Philox keys with the reference refit.
"""

import copy
import os
import pickle
from types import SimpleNamespace

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path then runs on CPU

import pytest
import torch

from lewm_fast.backends import triton_available
from lewm_fast.ops import elite_refit
from lewm_fast.planning import (CEMPlanner, GradientPlanner, ICEMPlanner, LagrangianPlanner, MPPIPlanner, PGDPlanner,
                                RolloutEngine, box_constraints, colored_noise_basis, warm_start)
from lewm_fast.planning.gradient import optimizer_capturable
from lewm_fast.reference.cem import CEMSolver, elite_refit_reference, sample_candidates

needs_triton = pytest.mark.skipif(not triton_available(torch.device("cpu")), reason="needs triton with TRITON_INTERPRET=1")
SMALL = dict(num_samples=32, topk=6, n_steps=4, horizon=3, receding_horizon=2)
PLANNERS = [CEMPlanner, MPPIPlanner, ICEMPlanner]


def _problem(model, b=2, h=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.latent_dim
    return torch.randn(b, h, d, generator=g), torch.randn(b, d, generator=g)


class CorruptCosts:
    """A rollout engine whose costs are NaN for every 3rd candidate (candidate 0, the mean, included) and +inf for
    every 5th from candidate 1: a partly diverging model."""

    def __init__(self, engine):
        self.engine = engine

    def prepare(self, emb_ctx, action_history):
        return self.engine.prepare(emb_ctx, action_history)

    def costs(self, *args, **kwargs):
        c = self.engine.costs(*args, **kwargs).clone()
        c[:, ::3] = float("nan")
        c[:, 1::5] = float("inf")
        return c


# ---------------------------------------------------------------------------------------------------- CEM parity
def test_plan_matches_reference_with_reference_rollout(tiny_model):
    ctx, goal = _problem(tiny_model)
    kw = dict(num_samples=64, topk=8, n_steps=6, horizon=3, receding_horizon=2, seed=0)
    want, want_diag = CEMSolver(tiny_model, **kw).plan(ctx, goal, latent=True, return_diagnostics=True)
    engine = RolloutEngine(tiny_model, backend="reference")
    got, diag = CEMPlanner(tiny_model, backend="reference", engine=engine, **kw).plan(ctx, goal, latent=True, return_diagnostics=True)
    assert torch.equal(got, want)
    for name in ("elite_costs", "mean", "std"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(diag, name), getattr(want_diag, name), strict=True))
    # the C++ refit sums in another order: same elites, means within a few ulps
    got, diag = CEMPlanner(tiny_model, backend="cpu", engine=engine, **kw).plan(ctx, goal, latent=True, return_diagnostics=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diag.elite_costs[-1], want_diag.elite_costs[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b, h", [(1, 3), (3, 2), (2, 1)])
def test_cpu_plan_matches_reference_with_fused_engine(tiny_model, b, h):
    ctx, goal = _problem(tiny_model, b, h)
    hist = torch.randn(b, h - 1, tiny_model.action_dim)
    init = torch.randn(b, 3, tiny_model.action_dim) * 0.1
    kw = dict(num_samples=64, topk=8, n_steps=5, horizon=3, receding_horizon=2, seed=3)
    want, want_diag = CEMSolver(tiny_model, **kw).plan(ctx, goal, hist, init, latent=True, return_diagnostics=True)
    got, diag = CEMPlanner(tiny_model, **kw).plan(ctx, goal, hist, init, latent=True, return_diagnostics=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diag.elite_costs[-1], want_diag.elite_costs[-1], rtol=1e-4, atol=1e-4)


def test_unseeded_plans_use_the_global_stream_like_reference(tiny_model):
    ctx, goal = _problem(tiny_model)
    engine = RolloutEngine(tiny_model, backend="reference")
    torch.manual_seed(11)
    want = CEMSolver(tiny_model, **SMALL).plan(ctx, goal, latent=True)
    torch.manual_seed(11)
    assert torch.equal(CEMPlanner(tiny_model, backend="reference", engine=engine, **SMALL).plan(ctx, goal, latent=True), want)


def test_plan_from_pixels_matches_reference(tiny_model):
    g = torch.Generator().manual_seed(0)
    obs, goal = torch.randn(2, 2, 3, 28, 28, generator=g), torch.randn(2, 3, 28, 28, generator=g)
    kw = dict(SMALL, seed=1)
    want = CEMSolver(tiny_model, **kw).plan(obs, goal)
    torch.testing.assert_close(CEMPlanner(tiny_model, **kw).plan(obs, goal), want, rtol=1e-4, atol=1e-4)


def test_fast_costs_select_the_reference_elites(tiny_model):
    """Given the same candidates, fused-engine costs pick the reference elite set, except for ties within tolerance."""
    b, n, k = 3, 300, 30
    ctx, goal = _problem(tiny_model, b)
    hist = torch.zeros(b, 2, tiny_model.action_dim)
    cand = sample_candidates(torch.zeros(b, 5, tiny_model.action_dim), torch.ones(b, 5, tiny_model.action_dim), n,
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_costs = CEMSolver(tiny_model).costs(ctx, hist, goal, cand)
    fast_costs = RolloutEngine(tiny_model).costs(ctx, hist, goal, cand)
    want = elite_refit_reference(cand, ref_costs, k)
    backends = ["cpu", "reference"] + (["triton"] if triton_available(torch.device("cpu")) else [])
    for backend in backends:
        got = elite_refit(cand, fast_costs, k, backend=backend)
        for env in range(b):
            boundary = float(want.elite_costs[env, -1])
            for i in set(got.elite_idx[env].tolist()) ^ set(want.elite_idx[env].tolist()):
                assert abs(float(ref_costs[env, i]) - boundary) <= 1e-4 * max(1.0, abs(boundary)), (backend, env, i)


# ---------------------------------------------------------------------------------------------------- Triton path
@needs_triton
def test_triton_cem_equals_step_by_step_replay(tiny_model):
    """The fused loop == sample (Philox key seed + i) -> reference costs -> reference refit, iteration by iteration."""
    from lewm_fast.kernels.elite_refit import sample_candidates_triton

    ctx, goal = _problem(tiny_model)
    engine = RolloutEngine(tiny_model, backend="reference")
    planner = CEMPlanner(tiny_model, backend="triton", engine=engine, seed=5, **SMALL)
    plan, diag = planner.plan(ctx, goal, latent=True, return_diagnostics=True)
    a = tiny_model.action_dim
    mean, std = torch.zeros(2, 3, a), torch.ones(2, 3, a)
    hist = torch.zeros(2, 2, a)
    seed = torch.tensor([5])
    for i in range(SMALL["n_steps"]):
        cand = sample_candidates_triton(mean, std, torch.empty(2, SMALL["num_samples"], 3, a), seed, i)
        mean, std, _, elite_costs = elite_refit_reference(cand, engine.costs(ctx, hist, goal, cand), SMALL["topk"])
        torch.testing.assert_close(diag.mean[i], mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(diag.std[i], std, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(diag.elite_costs[i], elite_costs, rtol=1e-6, atol=1e-6)
    assert torch.equal(plan, diag.mean[-1])
    assert int(planner.noise.seed_buf) == 5 + SMALL["n_steps"]  # the next plan draws fresh keys
    assert not torch.equal(planner.plan(ctx, goal, latent=True), plan)
    again = CEMPlanner(tiny_model, backend="triton", engine=engine, seed=5, **SMALL)
    assert torch.equal(again.plan(ctx, goal, latent=True), plan)


@needs_triton
@pytest.mark.parametrize("cls", PLANNERS)
def test_triton_planners_never_pick_nan_or_inf(tiny_model, cls):
    ctx, goal = _problem(tiny_model)
    engine = CorruptCosts(RolloutEngine(tiny_model, backend="reference"))
    planner = cls(tiny_model, backend="triton", engine=engine, seed=0, **SMALL)
    plan, diag = planner.plan(ctx, goal, latent=True, return_diagnostics=True)
    assert bool(torch.isfinite(plan).all())
    assert all(bool(torch.isfinite(c).all()) for c in diag.elite_costs)


@needs_triton
@pytest.mark.parametrize("cls", PLANNERS)
def test_triton_divergence_raises_after_the_plan(tiny_model, cls):
    with torch.no_grad():
        tiny_model.predictor.transformer.norm.weight.fill_(float("nan"))
    ctx, goal = _problem(tiny_model)
    planner = cls(tiny_model, backend="triton", engine=RolloutEngine(tiny_model, backend="reference"), seed=0, **SMALL)
    with pytest.raises(ValueError, match="diverged"):
        planner.plan(ctx, goal, latent=True)


# ---------------------------------------------------------------------------------------------------- CUDA graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", PLANNERS)
def test_cuda_graph_replays_equal_eager_plans(tiny_model, cls):
    model = tiny_model.cuda()
    ctx, goal = (t.cuda() for t in _problem(model))
    eager = cls(model, seed=0, cuda_graph=False, **SMALL)
    graphed = cls(model, seed=0, **SMALL)
    assert graphed.captures and not eager.captures
    for _ in range(3):  # capture, then replays: the Philox key advances the same way
        torch.testing.assert_close(graphed.act(ctx, goal, latent=True), eager.act(ctx, goal, latent=True), rtol=1e-5, atol=1e-5)
    assert all(buf.runner.graph is not None for buf in graphed._buffers.values())


def _gradient_planner(model, case, **kwargs):
    """The gradient planners with the optimizers a captured plan must handle (SGD; Adam, whose step counters the
    planner puts on the device; Adam + clipping + action noise; the Lagrangian's restarts; PGD's projection)."""
    small = dict(num_samples=16, n_steps=3, horizon=3, receding_horizon=2, seed=0, **kwargs)
    a = model.action_dim
    box = (-torch.ones(a), torch.ones(a))
    if case == "gd-sgd":
        return GradientPlanner(model, optimizer_kwargs={"lr": 0.1}, **small)
    if case == "gd-adam-clip-noise":
        return GradientPlanner(model, optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.05}, grad_clip=1.0,
                               action_noise=0.01, **small)
    if case == "lagrangian":
        dev = next(model.parameters()).device
        return LagrangianPlanner(model, constraints=box_constraints(*(t.to(dev) for t in box)), n_outer_steps=2,
                                 **small)
    return PGDPlanner(model, box, bins=3, optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.1}, **small)


GRADIENT_CASES = ["gd-sgd", "gd-adam-clip-noise", "lagrangian", "pgd"]


@pytest.mark.parametrize("cls, kwargs, capturable", [
    (torch.optim.SGD, {"lr": 1.0, "momentum": 0.9}, True),
    (torch.optim.Adam, {"lr": 0.1}, True),
    (torch.optim.AdamW, {"lr": 0.1, "capturable": True}, True),
    (torch.optim.Adam, {"lr": 0.1, "capturable": False}, False),  # the caller's choice stands
    (torch.optim.LBFGS, {}, False),  # needs a closure
    (torch.optim.Adagrad, {}, False),  # its step counter lives on the host
])
def test_optimizer_capturable(cls, kwargs, capturable):
    assert optimizer_capturable(cls, kwargs) is capturable


def test_gradient_planners_turn_on_capturable_only_for_captured_plans(tiny_model):
    planner = GradientPlanner(tiny_model, optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.1}, seed=0)
    params = torch.zeros(3, requires_grad=True)

    def buffers(capture):
        return SimpleNamespace(runner=SimpleNamespace(capture=capture))

    assert planner._optimizer(buffers(True), params).defaults["capturable"] is True
    assert planner._optimizer(buffers(False), params).defaults["capturable"] is False
    sgd = GradientPlanner(tiny_model, seed=0)._optimizer(buffers(True), params)
    assert isinstance(sgd, torch.optim.SGD) and "capturable" not in sgd.defaults
    assert not planner.captures and not planner._capturable(torch.zeros(1, 1, tiny_model.latent_dim))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_cuda_graph_gradient_plans_equal_eager_plans(tiny_model, case):
    """A gradient plan (forward, the fused rollout's backward, the optimizer) captured once and replayed equals the
    eager plans, MPC step after MPC step (float32 IEEE rollout: the same kernels both ways)."""
    model = tiny_model.cuda()
    ctx, goal = (t.cuda() for t in _problem(model))
    eager = _gradient_planner(model, case, dtype=torch.float32, cuda_graph=False)
    graphed = _gradient_planner(model, case, dtype=torch.float32)
    assert graphed.captures and not eager.captures
    for _ in range(3):  # capture, then replays: noise keys and warm starts advance as in the eager plans
        torch.testing.assert_close(graphed.act(ctx, goal, latent=True), eager.act(ctx, goal, latent=True),
                                   rtol=1e-4, atol=1e-4)
    assert all(buf.runner.graph is not None for buf in graphed._buffers.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_rollout_plans(tiny_model):
    model = tiny_model.cuda()
    ctx, goal = (t.cuda() for t in _problem(model))
    plan, diag = CEMPlanner(model, dtype=torch.bfloat16, seed=0, **dict(SMALL, n_steps=6)).plan(
        ctx, goal, latent=True, return_diagnostics=True)
    assert plan.dtype == torch.float32 and bool(torch.isfinite(plan).all())
    assert bool((diag.elite_costs[-1].mean(1) < diag.elite_costs[0].mean(1)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", PLANNERS)
def test_cuda_plan_after_warmup_compiles_nothing(tiny_model, cls):
    """lewm_fast.warmup compiles exactly the specializations the plan launches (recorded on meta tensors), so the
    JIT's cache hook sees no compilation during the first plan (5 envs, history 2: shapes no other test plans)."""
    import triton

    import lewm_fast

    model = tiny_model.cuda()
    ctx, goal = (t.cuda() for t in _problem(model, b=5, h=2))
    planner = cls(model, seed=0, **dict(SMALL, num_samples=24, horizon=4, receding_horizon=4))
    assert lewm_fast.warmup(planner, n_envs=5, history=2).launches > 0
    compiled = []
    previous = triton.knobs.runtime.jit_cache_hook

    def hook(*, repr, **kwargs):
        compiled.append(repr)
        return False  # compile as usual

    triton.knobs.runtime.jit_cache_hook = hook
    try:
        planner.plan(ctx, goal, latent=True)
        torch.cuda.synchronize()
    finally:
        triton.knobs.runtime.jit_cache_hook = previous
    assert compiled == []


# ---------------------------------------------------------------------------------------------------- NaN / bad input
@pytest.mark.parametrize("cls", PLANNERS)
def test_cpu_planners_never_pick_nan_or_inf(tiny_model, cls):
    ctx, goal = _problem(tiny_model)
    planner = cls(tiny_model, engine=CorruptCosts(RolloutEngine(tiny_model)), seed=0, **SMALL)
    plan, diag = planner.plan(ctx, goal, latent=True, return_diagnostics=True)
    assert bool(torch.isfinite(plan).all())
    assert all(bool(torch.isfinite(c).all()) for c in diag.elite_costs)


@pytest.mark.parametrize("cls", PLANNERS)
def test_cpu_divergence_raises(tiny_model, cls):
    with torch.no_grad():
        tiny_model.predictor.transformer.norm.weight.fill_(float("nan"))
    ctx, goal = _problem(tiny_model)
    with pytest.raises(ValueError, match="diverged"):
        cls(tiny_model, seed=0, **SMALL).plan(ctx, goal, latent=True)


@pytest.mark.parametrize("cls", PLANNERS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(topk=400), "topk"),
        (dict(horizon=0), "horizon"),
        (dict(n_steps=0), "n_steps"),
        (dict(num_samples=1), "num_samples"),
        (dict(receding_horizon=9), "receding_horizon"),
        (dict(var_scale=0.0), "var_scale"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_arguments(tiny_model, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(tiny_model, **kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(noise_beta=-1.0), "noise_beta"), (dict(keep_elites=1.5), "keep_elites"),
                                           (dict(momentum=1.0), "momentum")])
def test_bad_icem_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ICEMPlanner(tiny_model, **kwargs)


def test_bad_mppi_temperature(tiny_model):
    with pytest.raises(ValueError, match="temperature"):
        MPPIPlanner(tiny_model, temperature=0.0)


def test_bad_plan_inputs(tiny_model):
    planner = CEMPlanner(tiny_model, **SMALL)
    ctx, goal = _problem(tiny_model)
    with pytest.raises(ValueError, match="goal"):
        planner.plan(torch.randn(2, 2, 3, 28, 28), torch.randn(2, 3, 14, 28))
    with pytest.raises(ValueError, match="goal batch"):
        planner.plan(ctx, goal[:1], latent=True)
    with pytest.raises(ValueError, match="goal"):
        planner.plan(ctx, goal[:, :5], latent=True)
    with pytest.raises(ValueError, match="init_mean"):
        planner.plan(ctx, goal, init_mean=torch.zeros(2, 5, tiny_model.action_dim), latent=True)
    with pytest.raises(ValueError, match="action_history"):
        planner.plan(ctx, goal, action_history=torch.zeros(2, 1, tiny_model.action_dim), latent=True)
    with pytest.raises(ValueError, match="window"):
        planner.plan(torch.randn(2, 4, tiny_model.latent_dim), goal, latent=True)
    with pytest.raises(ValueError, match="NaN"):
        planner.plan(ctx.masked_fill(ctx > 2, float("nan")), goal, latent=True)


# ---------------------------------------------------------------------------------------------------- warm start / MPC
def test_warm_start_shifts_and_pads():
    plan = torch.arange(12.0).view(1, 4, 3)
    assert torch.equal(warm_start(plan, 1)[0, :3], plan[0, 1:])
    assert torch.equal(warm_start(plan, 1)[0, 3], torch.zeros(3))
    assert torch.equal(warm_start(plan, 3, pad="last")[0], plan[0, 3].expand(4, 3))
    assert bool(torch.isnan(warm_start(plan.unsqueeze(1), 2, pad="nan")[0, 0, 2:]).all())
    assert torch.equal(warm_start(plan, 0), plan)
    with pytest.raises(ValueError, match="executed_blocks"):
        warm_start(plan, 5)
    with pytest.raises(ValueError, match="pad"):
        warm_start(plan, 1, pad="mean")


def test_act_warm_starts_from_the_shifted_plan(tiny_model):
    ctx, goal = _problem(tiny_model)
    kw = dict(SMALL, seed=2)
    engine = RolloutEngine(tiny_model, backend="reference")
    mpc = CEMPlanner(tiny_model, backend="cpu", engine=engine, **kw)
    manual = CEMPlanner(tiny_model, backend="cpu", engine=engine, **kw)
    first = manual.plan(ctx, goal, latent=True)
    assert torch.equal(mpc.act(ctx, goal, latent=True), first[:, :2])
    second = manual.plan(ctx, goal, init_mean=warm_start(first, 2), latent=True)
    assert torch.equal(mpc.act(ctx, goal, latent=True), second[:, :2])
    mpc.reset(torch.tensor([1]))  # env 1 restarts its episode: cold start there only
    third = manual.plan(ctx, goal, init_mean=warm_start(second, 2) * torch.tensor([1.0, 0.0]).view(2, 1, 1), latent=True)
    assert torch.equal(mpc.act(ctx, goal, latent=True), third[:, :2])
    with pytest.raises(ValueError, match="reset"):
        mpc.act(ctx[:1], goal[:1], latent=True)
    mpc.reset()
    assert mpc.act(ctx[:1], goal[:1], latent=True).shape == (1, 2, tiny_model.action_dim)


@pytest.mark.parametrize("cls", PLANNERS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_planner_plans_on_its_own(tiny_model, cls, how):
    """A planner copied after a plan continues the noise stream and the MPC warm start with loop buffers of its own,
    and leaves the original untouched (the buffers' runner closes over the planner that built them)."""
    ctx, goal = _problem(tiny_model)
    planner, twin = cls(tiny_model, seed=4, **SMALL), cls(tiny_model, seed=4, **SMALL)
    first = planner.act(ctx, goal, latent=True)
    twin.act(ctx, goal, latent=True)
    copied = copy.deepcopy(planner) if how == "deepcopy" else pickle.loads(pickle.dumps(planner))
    assert copied._buffers == {}
    second = twin.act(ctx, goal, latent=True)  # the step after `first`
    assert not torch.equal(second, first)
    torch.testing.assert_close(copied.act(ctx, goal, latent=True), second)
    torch.testing.assert_close(planner.act(ctx, goal, latent=True), second)  # the copy did not advance the original


# ---------------------------------------------------------------------------------------------------- MPPI
def test_mppi_first_iteration_is_the_weighted_mean(tiny_model):
    ctx, goal = _problem(tiny_model)
    a, temperature = tiny_model.action_dim, 0.5
    planner = MPPIPlanner(tiny_model, temperature=temperature, seed=4, **dict(SMALL, n_steps=1))
    plan, diag = planner.plan(ctx, goal, latent=True, return_diagnostics=True)
    cand = sample_candidates(torch.zeros(2, 3, a), torch.ones(2, 3, a), SMALL["num_samples"], torch.Generator().manual_seed(4))
    with torch.no_grad():
        costs = CEMSolver(tiny_model).costs(ctx, torch.zeros(2, 2, a), goal, cand)
    w = torch.exp(-(costs - costs.min(1, keepdim=True).values) / temperature)
    want = (w[:, :, None, None] * cand).sum(1) / w.sum(1)[:, None, None]
    torch.testing.assert_close(plan, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(diag.elite_costs[0], costs.sort(1).values[:, : SMALL["topk"]], rtol=1e-4, atol=1e-4)
    assert torch.equal(diag.std[0], torch.ones(2, 3, a))


def test_mppi_low_temperature_picks_the_best_candidate(tiny_model):
    ctx, goal = _problem(tiny_model)
    a = tiny_model.action_dim
    plan = MPPIPlanner(tiny_model, temperature=1e-6, seed=4, **dict(SMALL, n_steps=1)).plan(ctx, goal, latent=True)
    cand = sample_candidates(torch.zeros(2, 3, a), torch.ones(2, 3, a), SMALL["num_samples"], torch.Generator().manual_seed(4))
    with torch.no_grad():
        best = CEMSolver(tiny_model).costs(ctx, torch.zeros(2, 2, a), goal, cand).argmin(1)
    torch.testing.assert_close(plan, cand[torch.arange(2), best], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- iCEM
@pytest.mark.parametrize("horizon", [1, 4, 5])
def test_colored_noise_basis(horizon):
    white = colored_noise_basis(0.0, horizon)
    torch.testing.assert_close(white.T @ white, torch.eye(horizon), rtol=0, atol=1e-6)
    pink = colored_noise_basis(2.0, horizon)
    cov = pink.T @ pink
    torch.testing.assert_close(cov.diagonal(), torch.ones(horizon), rtol=0, atol=1e-6)
    if horizon > 2:
        assert float(cov[0, 1]) > 0.2  # low frequencies dominate: neighbouring steps correlate


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=needs_triton)])
def test_icem_keeps_elites_so_best_cost_never_rises(tiny_model, backend):
    ctx, goal = _problem(tiny_model)
    kw = dict(SMALL, n_steps=5)
    engine = RolloutEngine(tiny_model, backend="reference")
    _, diag = ICEMPlanner(tiny_model, backend=backend, engine=engine, seed=0, **kw).plan(ctx, goal, latent=True,
                                                                                         return_diagnostics=True)
    best = torch.stack([c[:, 0] for c in diag.elite_costs])
    assert bool((best[1:] <= best[:-1] + 1e-5).all())
    cem_like = ICEMPlanner(tiny_model, backend=backend, engine=engine, seed=0, keep_elites=0.0, momentum=0.0, **kw)
    _, no_keep = cem_like.plan(ctx, goal, latent=True, return_diagnostics=True)
    best_no_keep = torch.stack([c[:, 0] for c in no_keep.elite_costs])
    assert bool((best_no_keep[1:] > best_no_keep[:-1] + 1e-5).any())  # without kept elites it can rise: a real check


def test_icem_act_carries_shifted_elites(tiny_model):
    ctx, goal = _problem(tiny_model)
    planner = ICEMPlanner(tiny_model, seed=0, **SMALL)
    planner.act(ctx, goal, latent=True)
    elites = planner._carry["init_elites"]
    assert elites.shape == (2, planner.n_keep, 3, tiny_model.action_dim)
    assert bool(torch.isfinite(elites[:, :, :1]).all()) and bool(torch.isnan(elites[:, :, 1:]).all())
    assert planner.act(ctx, goal, latent=True).shape == (2, 2, tiny_model.action_dim)
    planner.reset(torch.tensor([0]))
    assert bool(torch.isnan(planner._carry["init_elites"][0]).all())


@pytest.mark.parametrize("cls", PLANNERS)
def test_planners_reduce_cost_batched(tiny_model, cls):
    ctx, goal = _problem(tiny_model, b=3)
    plan, diag = cls(tiny_model, seed=0, **dict(SMALL, n_steps=6)).plan(ctx, goal, latent=True, return_diagnostics=True)
    assert plan.shape == (3, 3, tiny_model.action_dim) and plan.dtype == torch.float32
    assert torch.equal(diag.mean[-1], plan)
    assert bool((diag.elite_costs[-1].mean(1) < diag.elite_costs[0].mean(1)).all())


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("cls", PLANNERS)
def test_reseed_restarts_the_stream_like_a_new_planner(tiny_model, cls, backend):
    ctx, goal = _problem(tiny_model)
    planner = cls(tiny_model, backend=backend, seed=1, **SMALL)
    planner.plan(ctx, goal, latent=True)  # advance the stream
    planner.reseed(9)
    fresh = cls(tiny_model, backend=backend, seed=9, **SMALL)
    torch.testing.assert_close(planner.plan(ctx, goal, latent=True), fresh.plan(ctx, goal, latent=True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        planner.reseed(-1)
