"""Reference CEM (SPEC §3): candidate 0 is the mean, elites are the k lowest costs, unbiased std, NaN never elite."""

import pytest
import torch

from lewm_fast.reference.cem import CEMSolver, elite_refit_reference, goal_mse_cost, sample_candidates


def test_candidate_zero_is_the_mean():
    mean, std = torch.randn(2, 5, 4), torch.rand(2, 5, 4) + 0.5
    cand = sample_candidates(mean, std, 50, torch.Generator().manual_seed(0))
    assert cand.shape == (2, 50, 5, 4)
    assert torch.equal(cand[:, 0], mean)
    assert not torch.allclose(cand[:, 1], mean)


def test_sampling_scale_and_shift():
    mean, std = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 0.5)
    cand = sample_candidates(mean, std, 20000, torch.Generator().manual_seed(0))[:, 1:]
    torch.testing.assert_close(cand.mean(), torch.tensor(2.0), atol=0.01, rtol=0)
    torch.testing.assert_close(cand.std(), torch.tensor(0.5), atol=0.01, rtol=0)


def test_elites_are_k_lowest_and_std_unbiased():
    g = torch.Generator().manual_seed(0)
    cand, costs = torch.randn(3, 40, 5, 2, generator=g), torch.randn(3, 40, generator=g)
    mean, std, idx, elite_costs = elite_refit_reference(cand, costs, 7)
    for b in range(3):
        want = sorted(range(40), key=lambda i: float(costs[b, i]))[:7]
        assert idx[b].tolist() == want
        e = cand[b, want]
        torch.testing.assert_close(mean[b], e.sum(0) / 7)
        torch.testing.assert_close(std[b], ((e - e.mean(0)) ** 2).sum(0).div(6).sqrt())
        torch.testing.assert_close(elite_costs[b], costs[b, want])


def test_nan_and_inf_costs_are_never_elites():
    cand = torch.randn(1, 10, 2, 2)
    costs = torch.arange(10.0).unsqueeze(0)
    costs[0, 0], costs[0, 3] = float("nan"), float("inf")
    _, _, idx, _ = elite_refit_reference(cand, costs, 4)
    assert idx[0].tolist() == [1, 2, 4, 5]
    costs[0, :8] = float("nan")
    with pytest.raises(ValueError, match="diverged"):
        elite_refit_reference(cand, costs, 4)


def test_goal_cost_is_squared_distance_summed():
    last, goal = torch.randn(2, 6, 8), torch.randn(2, 8)
    torch.testing.assert_close(goal_mse_cost(last, goal)[1, 3], ((last[1, 3] - goal[1]) ** 2).sum())


def test_plan_is_reproducible_and_improves_cost(tiny_model):
    solver = CEMSolver(tiny_model, num_samples=64, topk=8, n_steps=6, horizon=3, receding_horizon=2, seed=0)
    ctx = torch.randn(2, 3, 32)
    goal = torch.randn(2, 32)
    plan, diag = solver.plan(ctx, goal, latent=True, return_diagnostics=True)
    again = CEMSolver(tiny_model, num_samples=64, topk=8, n_steps=6, horizon=3, receding_horizon=2, seed=0)
    assert torch.equal(plan, again.plan(ctx, goal, latent=True))
    assert plan.shape == (2, 3, tiny_model.action_dim)
    assert len(diag.elite_costs) == 6 and diag.std[-1].shape == plan.shape
    assert torch.equal(diag.mean[-1], plan)
    assert bool((diag.elite_costs[-1][:, 0] <= diag.elite_costs[0][:, 0] + 1e-6).all())


def test_plan_from_pixels(tiny_model):
    solver = CEMSolver(tiny_model, num_samples=16, topk=4, n_steps=2, horizon=2, receding_horizon=1, seed=1)
    plan = solver.plan(torch.randn(1, 2, 3, 28, 28), torch.randn(1, 3, 28, 28))
    assert plan.shape == (1, 2, tiny_model.action_dim)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(topk=400), "topk"),
        (dict(horizon=0), "horizon"),
        (dict(num_samples=1), "num_samples"),
        (dict(receding_horizon=9), "receding_horizon"),
        (dict(var_scale=0.0), "var_scale"),
    ],
)
def test_bad_solver_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CEMSolver(tiny_model, **kwargs)


def test_bad_plan_inputs(tiny_model):
    solver = CEMSolver(tiny_model, num_samples=8, topk=2, n_steps=1, horizon=2, receding_horizon=1)
    with pytest.raises(ValueError, match="goal"):
        solver.plan(torch.randn(1, 2, 3, 28, 28), torch.randn(1, 3, 14, 28))
    with pytest.raises(ValueError, match="goal batch|first"):
        solver.plan(torch.randn(2, 3, 32), torch.randn(1, 32), latent=True)
    with pytest.raises(ValueError, match="window"):
        solver.plan(torch.randn(1, 4, 32), torch.randn(1, 32), latent=True)
    with pytest.raises(ValueError, match="init_mean"):
        solver.plan(torch.randn(1, 3, 32), torch.randn(1, 32), latent=True, init_mean=torch.zeros(1, 3, 10))
    with pytest.raises(ValueError, match="action_history"):
        solver.plan(torch.randn(1, 3, 32), torch.randn(1, 32), latent=True, action_history=torch.zeros(1, 1, 10))
