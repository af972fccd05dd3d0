"""One CEM plan (300 candidates, top 30, horizon 5, default LeWM, latent context of 3 frames): lewm_fast.CEMPlanner vs
the reference CEMSolver vs torch.compile(reference costs), in the same run.

CUDA: 30 iterations, 1 env and 50 envs batched (targets on an H100: <= 15 ms per plan for 1 env, >= 50 plans/s for 50
envs, i.e. <= 1 s per batched call); also the bf16 rollout. CPU: 1 env and n_steps=3 to keep the bench short (the
per-iteration work is the same; extra_info records n_steps). Encoding is excluded (``latent=True``)."""

import pytest
import torch

from lewm_fast import build_lewm
from lewm_fast.planning import CEMPlanner
from lewm_fast.reference import CEMSolver

IMPLS = ["fast", "fast_bf16", "reference", "compiled_reference"]


@pytest.fixture(scope="module")
def model(device):
    torch.manual_seed(0)
    return build_lewm(action_dim=2).to(device).eval()


def _planner(impl: str, model, n_steps: int):
    kw = dict(num_samples=300, topk=30, n_steps=n_steps, horizon=5, receding_horizon=5, seed=0)
    if impl.startswith("fast"):
        return CEMPlanner(model, dtype=torch.bfloat16 if impl == "fast_bf16" else None, **kw)
    solver = CEMSolver(model, **kw)
    if impl == "compiled_reference":
        solver.costs = torch.compile(solver.costs)  # the rollout + cost, where the time goes
    return solver


@pytest.mark.parametrize("envs", [1, 50])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_cem_plan(run_bench, benchmark, model, device, is_cuda, envs, impl):
    if not is_cuda and (envs > 1 or impl == "fast_bf16"):
        pytest.skip("CPU bench: 1 env, fp32 only (bf16 rollout needs the Triton backend)")
    n_steps = 30 if is_cuda else 3
    planner = _planner(impl, model, n_steps)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(envs, 3, model.latent_dim, device=device, generator=g)
    goal = torch.randn(envs, model.latent_dim, device=device, generator=g)
    benchmark.group = f"cem_plan_{envs}env"
    run_bench(
        lambda: planner.plan(ctx, goal, latent=True),
        rounds_cpu=7,
        rounds_cuda=20,
        op="cem_plan", impl=impl, envs=envs, n_steps=n_steps, num_samples=300, topk=30, horizon=5,
        cuda_graph=impl.startswith("fast") and is_cuda, latent_input=True, torch_threads=torch.get_num_threads(),
    )
