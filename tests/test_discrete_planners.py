"""The discrete planners (PGDPlanner, CategoricalCEMPlanner) over the codebook of a continuous action box, and their
lewm-eval presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lewm_fast.backends import triton_available
from lewm_fast.cli.evaluate import main as eval_main
from lewm_fast.data import ActionCodec
from lewm_fast.evaluation.planners import PlannerInputs, build_planner, validate_planner_config
from lewm_fast.planning import ActionGrid, CategoricalCEMPlanner, PGDPlanner
from lewm_fast.planning.bounds import normalized_box
from lewm_fast.planning.categorical_cem import gumbel_argmax, gumbel_max_indices, refit_probs
from lewm_fast.planning.pgd import project_simplex

PRESETS = Path(__file__).resolve().parents[1] / "lewm_fast" / "configs" / "eval" / "planner"
TWO_ROOM = Path(__file__).resolve().parents[1] / "lewm_fast" / "assets" / "two_room"
needs_triton = pytest.mark.skipif(not triton_available(torch.device("cpu")), reason="needs triton with TRITON_INTERPRET=1")


def _box(model, low=-1.0, high=0.5):
    a = model.action_dim
    return torch.full((a,), low), torch.full((a,), high)


def _problem(model, b=2, h=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.latent_dim
    return torch.randn(b, h, d, generator=g), torch.randn(b, d, generator=g)


def _in_codebook(plan, grid):
    return bool(((plan.unsqueeze(-1) - grid.values).abs().amin(-1) < 1e-6).all())


# ---------------------------------------------------------------------------------------------------- the codebook
def test_action_grid_spans_the_box_and_decodes_one_hots_to_its_values():
    grid = ActionGrid((torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])), 5, 2, torch.device("cpu"))
    torch.testing.assert_close(grid.values, torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.5, 2.0]]))
    index = torch.tensor([[[4, 0], [2, 3]]])
    torch.testing.assert_close(grid.decode(grid.one_hot(index)), grid.take(index))
    torch.testing.assert_close(grid.take(index), torch.tensor([[[1.0, 0.0], [0.0, 1.5]]]))
    assert torch.equal(grid.nearest(torch.tensor([[0.3, -7.0]])), torch.tensor([[3, 0]]))
    uniform = torch.full((2, 5), 0.2)
    torch.testing.assert_close(grid.decode(uniform), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(grid.spread(grid.one_hot(index)), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("bins", [1, 0, 2.5, True])
def test_action_grid_needs_at_least_two_bins(bins):
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        ActionGrid((torch.zeros(2), torch.ones(2)), bins, 2, torch.device("cpu"))


def test_action_grid_checks_the_box():
    with pytest.raises(ValueError, match="low must be <= high"):
        ActionGrid((torch.ones(2), torch.zeros(2)), 3, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="2 values each"):
        ActionGrid((torch.zeros(3), torch.ones(3)), 3, 2, torch.device("cpu"))


def test_projection_lands_on_the_simplex_and_keeps_its_points():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, generator=g) * 3
    p = project_simplex(x, 5)
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 6))
    torch.testing.assert_close(project_simplex(p, 5), p)
    # the nearest simplex point: no other simplex point (random ones) is closer to x
    others = torch.distributions.Dirichlet(torch.ones(5)).sample((200,))
    best = (x.unsqueeze(-2) - others).square().sum(-1).amin(-1)
    assert bool(((x - p).square().sum(-1) <= best + 1e-5).all())


def test_gumbel_max_draws_are_stable_worldmodels_and_follow_the_probabilities():
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1)), -1)
    ours = gumbel_max_indices(probs, 7, torch.Generator().manual_seed(2))
    u = torch.rand((2, 7, 3, 4, 5), generator=torch.Generator().manual_seed(2)).clamp_min(1e-10)
    theirs = (probs.clamp_min(1e-10).log().unsqueeze(1) - (-u.log()).log()).argmax(-1)
    assert torch.equal(ours, theirs)
    skewed = torch.tensor([0.1, 0.6, 0.3]).expand(1, 1, 1, 3)
    draws = gumbel_argmax(skewed, torch.rand(1, 20000, 1, 1, 3, generator=torch.Generator().manual_seed(3)))
    freq = torch.bincount(draws.flatten(), minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, skewed.flatten(), atol=0.02, rtol=0)


def test_refit_probs_smoothing_and_momentum():
    probs = torch.full((1, 1, 1, 3), 1 / 3)
    elites = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]]).reshape(1, 4, 1, 1, 3)
    torch.testing.assert_close(refit_probs(probs, elites, 0.0, 0.0).flatten(), torch.tensor([0.75, 0.0, 0.25]))
    smoothed = refit_probs(probs, elites, 0.25, 0.0).flatten()
    torch.testing.assert_close(smoothed, torch.tensor([1.0, 0.25, 0.5]) / 1.75)
    torch.testing.assert_close(refit_probs(probs, elites, 0.0, 0.5).flatten(),
                               0.5 * torch.full((3,), 1 / 3) + 0.5 * torch.tensor([0.75, 0.0, 0.25]))


# ---------------------------------------------------------------------------------------------------- both planners
PGD_SMALL = dict(bins=3, num_samples=6, n_steps=3, horizon=3, receding_horizon=2)
CCEM_SMALL = dict(bins=4, num_samples=16, topk=4, n_steps=3, horizon=3, receding_horizon=2)


@pytest.mark.parametrize("cls, kwargs, elites", [(PGDPlanner, PGD_SMALL, 1), (CategoricalCEMPlanner, CCEM_SMALL, 4)])
def test_plans_alike_on_the_reference_and_cpu_backends(tiny_model, one_thread, cls, kwargs, elites):
    emb, goal = _problem(tiny_model)
    out = []
    for backend in ("reference", "cpu"):
        planner = cls(tiny_model, _box(tiny_model), backend=backend, seed=0, **kwargs)
        plan, diag = planner.plan(emb, goal, latent=True, return_diagnostics=True)
        assert plan.shape == (2, 3, tiny_model.action_dim) and _in_codebook(plan, planner.grid)
        assert [c.shape for c in diag.elite_costs] == [(2, elites)] * 3
        out.append((plan, torch.stack(diag.elite_costs)))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- PGD
def test_pgd_keeps_every_sample_on_the_simplex(tiny_model, one_thread):
    emb, goal = _problem(tiny_model)
    planner = PGDPlanner(tiny_model, _box(tiny_model), backend="cpu", seed=0, action_noise=0.3,
                         optimizer_kwargs={"lr": 5.0}, **PGD_SMALL)
    seen = []
    record = planner._record

    def checked(buf, step, params, costs):
        seen.append(params.detach().clone())
        record(buf, step, params, costs)

    planner._record = checked
    planner.plan(emb, goal, latent=True)
    assert len(seen) == PGD_SMALL["n_steps"]
    for params in seen:  # after each step's update, noise and projection
        assert params.shape == (2, 6, 3, tiny_model.action_dim, 3)
        assert bool((params >= 0).all())
        torch.testing.assert_close(params.sum(-1), torch.ones(params.shape[:-1]))


def test_pgd_without_a_step_size_returns_the_warm_starts_nearest_values(tiny_model, one_thread):
    emb, goal = _problem(tiny_model)
    planner = PGDPlanner(tiny_model, _box(tiny_model), bins=4, num_samples=1, n_steps=1, horizon=3,
                         receding_horizon=3, backend="cpu", seed=0, optimizer_kwargs={"lr": 0.0})
    init = torch.empty(2, 3, tiny_model.action_dim).uniform_(-2, 2, generator=torch.Generator().manual_seed(4))
    plan = planner.plan(emb, goal, init_mean=init, latent=True)
    torch.testing.assert_close(plan, planner.grid.take(planner.grid.nearest(init)))


def test_pgd_act_warm_starts_and_lowers_the_cost(tiny_model, one_thread):
    emb, goal = _problem(tiny_model)
    planner = PGDPlanner(tiny_model, _box(tiny_model), backend="cpu", seed=0, bins=3, num_samples=8, n_steps=6,
                         horizon=3, receding_horizon=2, optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.2})
    _, diag = planner.plan(emb, goal, latent=True, return_diagnostics=True)
    assert float(diag.elite_costs[-1].mean()) < float(diag.elite_costs[0].mean())
    step = planner.act(emb, goal, latent=True)
    assert step.shape == (2, 2, tiny_model.action_dim) and _in_codebook(step, planner.grid)
    assert planner._carry["init_mean"].shape == (2, 3, tiny_model.action_dim)


# ---------------------------------------------------------------------------------------------------- categorical CEM
def test_categorical_cem_one_iteration_is_stable_worldmodels_step(tiny_model, one_thread):
    """One iteration from uniform probabilities: the Gumbel-max candidates of stable-worldmodel's draw (candidate 0
    each entry's most likely value: the first), the elites' frequencies, and the plan their most likely values."""
    emb, goal = _problem(tiny_model)
    planner = CategoricalCEMPlanner(tiny_model, _box(tiny_model), bins=3, num_samples=12, topk=3, n_steps=1,
                                    horizon=3, receding_horizon=3, backend="cpu", seed=5)
    plan, diag = planner.plan(emb, goal, latent=True, return_diagnostics=True)
    a = tiny_model.action_dim
    probs = torch.full((2, 3, a, 3), 1 / 3)
    index = gumbel_max_indices(probs, 12, torch.Generator().manual_seed(5))
    index[:, 0] = 0
    cand = planner.grid.take(index)
    costs = planner.costs(emb, torch.zeros(2, 2, a), goal, cand)
    elite_costs, elites = costs.topk(3, dim=1, largest=False)
    freq = planner.grid.one_hot(index[torch.arange(2).unsqueeze(1), elites]).mean(1)
    torch.testing.assert_close(diag.elite_costs[0], elite_costs)
    torch.testing.assert_close(plan, planner.grid.take(freq.argmax(-1)))
    torch.testing.assert_close(diag.std[0], planner.grid.spread(freq))


def test_categorical_cem_with_all_samples_as_elites_keeps_the_sampled_frequencies(tiny_model, one_thread):
    """topk = num_samples: every candidate is an elite, so the plan follows the draw, not the costs."""
    emb, goal = _problem(tiny_model)
    kwargs = dict(bins=3, num_samples=8, topk=8, n_steps=1, horizon=2, receding_horizon=2, backend="cpu", seed=1)
    planner = CategoricalCEMPlanner(tiny_model, _box(tiny_model), **kwargs)
    plan = planner.plan(emb, goal, latent=True)
    index = gumbel_max_indices(torch.full((2, 2, tiny_model.action_dim, 3), 1 / 3), 8, torch.Generator().manual_seed(1))
    index[:, 0] = 0
    torch.testing.assert_close(plan, planner.grid.take(planner.grid.one_hot(index).mean(1).argmax(-1)))


@pytest.mark.parametrize("cls", [PGDPlanner, CategoricalCEMPlanner])
@pytest.mark.parametrize("kwargs, match", [
    (dict(bins=1), "bins must be an int >= 2"),
    (dict(action_bounds=(torch.zeros(3), torch.ones(3))), "values each"),
    (dict(num_samples=0), "num_samples"),
    (dict(horizon=2, receding_horizon=3), "receding_horizon"),
])
def test_bad_arguments(tiny_model, cls, kwargs, match):
    kwargs = {"action_bounds": _box(tiny_model), **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(tiny_model, **kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(smoothing=-0.1), "smoothing"), (dict(alpha=1.0), "alpha"),
                                           (dict(topk=20, num_samples=10), "topk")])
def test_bad_categorical_cem_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CategoricalCEMPlanner(tiny_model, _box(tiny_model), **kwargs)


@needs_triton
@pytest.mark.parametrize("cls, kwargs", [(PGDPlanner, dict(PGD_SMALL, num_samples=3, n_steps=2)),
                                         (CategoricalCEMPlanner, dict(CCEM_SMALL, num_samples=8, n_steps=2))])
def test_triton_backend_plans_inside_the_codebook(tiny_model, cls, kwargs):
    """Triton (interpreter): Philox draws instead of torch's, so the plans are in distribution, not equal."""
    emb, goal = _problem(tiny_model, b=1)
    planner = cls(tiny_model, _box(tiny_model), backend="triton", dtype=torch.float32, seed=0, **kwargs)
    plan, diag = planner.plan(emb, goal, latent=True, return_diagnostics=True)
    assert plan.shape == (1, 3, tiny_model.action_dim) and _in_codebook(plan, planner.grid)
    assert all(bool(torch.isfinite(c).all()) for c in diag.elite_costs)


# ---------------------------------------------------------------------------------------------------- lewm-eval
@pytest.mark.parametrize("name, cls", [("pgd", PGDPlanner), ("categorical_cem", CategoricalCEMPlanner)])
def test_lewm_eval_presets_build_the_planners_over_the_env_box(tiny_model, name, cls):
    cfg = OmegaConf.create({"seed": 3, "planner": OmegaConf.load(PRESETS / f"{name}.yaml")})
    validate_planner_config(cfg)
    env_a, block = 2, tiny_model.action_dim // 2
    codec = ActionCodec(np.full(env_a, 0.1), np.full(env_a, 0.5), block, env_a)
    inputs = PlannerInputs(Path("."), codec, -np.ones(env_a), np.ones(env_a))
    planner = build_planner(tiny_model, cfg, inputs)
    assert type(planner) is cls and planner.bins == cfg.planner.bins
    low, high = normalized_box(codec, -np.ones(env_a), np.ones(env_a))
    torch.testing.assert_close(planner.grid.values[:, 0], torch.as_tensor(low, dtype=torch.float32))
    torch.testing.assert_close(planner.grid.values[:, -1], torch.as_tensor(high, dtype=torch.float32))
    with pytest.raises(ValueError, match="env's action box"):
        build_planner(tiny_model, cfg, None)
    for key, bad, match in [("bins", 1, "planner.bins must be an integer >= 2"),
                            ("action_bounds", "clip", "does not apply"), ("num_samples", 0, "planner.num_samples")]:
        broken = cfg.copy()
        broken.planner[key] = bad
        with pytest.raises(ValueError, match=match):
            validate_planner_config(broken)


@pytest.mark.parametrize("args, message", [
    (["planner=pgd", "planner.bins=1"], "planner.bins must be an integer >= 2, got 1"),
    (["planner=categorical_cem", "planner.topk=400"], r"planner.topk \(400\) must be <= planner.num_samples"),
    (["planner=categorical_cem", "planner.alpha=1"], "planner.alpha must be < 1"),
])
def test_cli_bad_discrete_settings_fail_in_one_line(args, message, capsys):
    import re

    assert eval_main([f"checkpoint={TWO_ROOM}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lewm-eval: error: ") and err.count("\n") == 1 and re.search(message, err)
