"""One gradient-descent plan (stable-worldmodel's GradientSolver: SGD on 300 action sequences, horizon 5, default LeWM,
latent context of 1 frame (lewm-eval's default: the window grows over the first steps, whose kept keys / values the
fused rollout reuses) or 3 frames (a full window)): GradientPlanner on the fused rollout's backward vs on the
reference autograd path vs on torch.compile of the reference costs, in the same run.

CUDA: 30 steps, 1 context frame (to fit bench/device_run.sh's time budget). CPU: n_steps=3 to keep the bench short
(every step is the same forward + backward; extra_info records n_steps), one round after a warm-up one; on CPU
extra_info also records each timed round's process CPU time (``cpu_seconds``: on a shared machine it counts this
process's own work, not the time other jobs held the cores). Encoding is excluded (``latent=True``)."""

import time

import pytest
import torch

from lewm_fast import build_lewm
from lewm_fast.planning import RolloutEngine
from lewm_fast.planning.gradient import GradientPlanner

IMPLS = ["fast", "reference", "compiled_reference"]
HISTORIES = [1] if torch.cuda.is_available() else [1, 3]  # CUDA: 1 frame only, to fit device_run.sh's time budget


@pytest.fixture(scope="module")
def model(device):
    torch.manual_seed(0)
    return build_lewm(action_dim=2).to(device).eval()


def _planner(impl: str, model, n_steps: int) -> GradientPlanner:
    kw = dict(num_samples=300, n_steps=n_steps, horizon=5, receding_horizon=5, seed=0)
    if impl == "fast":
        return GradientPlanner(model, **kw)
    engine = RolloutEngine(model, backend="reference")  # the oracle: LeWM.rollout under autograd
    if impl == "compiled_reference":
        engine.costs = torch.compile(engine.costs)
    return GradientPlanner(model, engine=engine, **kw)


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_gradient_plan(run_bench, benchmark, model, device, is_cuda, impl, history):
    n_steps = 30 if is_cuda else 3
    planner = _planner(impl, model, n_steps)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(1, history, model.latent_dim, device=device, generator=g)
    goal = torch.randn(1, model.latent_dim, device=device, generator=g)
    benchmark.group = f"gradient_plan_1env_history{history}"
    cpu_seconds = []

    def plan():
        start = time.process_time()
        planner.plan(ctx, goal, latent=True)
        cpu_seconds.append(time.process_time() - start)

    run_bench(
        plan,
        rounds_cpu=1,
        rounds_cuda=5,
        op="gradient_plan", impl=impl, envs=1, history=history, n_steps=n_steps, num_samples=300, horizon=5,
        backend=planner.engine.backend if impl == "fast" else "reference", dtype=str(planner.engine.dtype),
        torch_threads=torch.get_num_threads(),
    )
    if not is_cuda:  # CUDA work is asynchronous: the host's CPU time says nothing there
        benchmark.extra_info["cpu_seconds"] = cpu_seconds[1:]  # the first call is the warm-up round
