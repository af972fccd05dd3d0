"""Reference (eager PyTorch) baselines: encoder forward, one CEM iteration's rollout, SIGReg fwd+bwd.

CUDA: full paper shapes. CPU: same model, smaller batches (stated in extra_info)."""

import pytest
import torch

from lewm_fast import build_lewm
from lewm_fast.reference import CEMSolver, SIGReg, sample_candidates


@pytest.fixture(scope="module")
def model():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    return build_lewm(action_dim=2).to(device).eval()


def test_reference_encoder_forward(run_bench, model, is_cuda, device):
    frames = 128 if is_cuda else 8
    px = torch.randn(frames, 1, 3, 224, 224, device=device)
    with torch.no_grad():
        run_bench(lambda: model.encode(px), rounds_cpu=3, frames=frames, image=224, op="encoder_forward", impl="reference")


def test_reference_cem_iteration_rollout(run_bench, model, device):
    """Costs of 300 candidates x horizon 5 from a 3-frame context: one CEM iteration's predictor work (1 env)."""
    solver = CEMSolver(model, num_samples=300, topk=30, horizon=5, seed=0)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randn(1, 3, 192, device=device, generator=g)
    hist = torch.zeros(1, 2, model.action_dim, device=device)
    goal = torch.randn(1, 192, device=device, generator=g)
    mean = torch.zeros(1, 5, model.action_dim, device=device)
    cand = sample_candidates(mean, torch.ones_like(mean), 300, g)
    with torch.no_grad():
        run_bench(lambda: solver.costs(ctx, hist, goal, cand), envs=1, samples=300, horizon=5, op="cem_iteration_rollout", impl="reference")


def test_reference_sigreg_fwd_bwd(run_bench, device):
    mod = SIGReg(knots=17, num_proj=1024).to(device)
    z = torch.randn(4, 128, 192, device=device, requires_grad=True)
    A = mod.draw_projection(z, torch.Generator(device=device).manual_seed(0))

    def step():
        z.grad = None
        mod(z, A=A).backward()

    run_bench(step, rounds_cpu=5, T=4, B=128, D=192, M=1024, op="sigreg_fwd_bwd", impl="reference")
