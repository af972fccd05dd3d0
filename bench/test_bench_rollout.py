"""One CEM iteration's rollout + costs (300 candidates x horizon 5 from a 3-frame latent context, default LeWM:
192-d, 6 blocks, 16 heads x 64, MLP 2048, action input 10): RolloutEngine.costs vs the reference CEMSolver.costs vs
torch.compile(reference costs), in the same run, on the same candidates.

CUDA: 1 env and 50 envs batched; fp32 and bf16 engines, eager and replayed from a CUDA graph. CPU: 1 env, fp32 (the
C++ path; a round of the reference takes ~0.7 s on 2 cores). extra_info records the largest relative cost error
against the reference and the torch thread count."""

import pytest
import torch

from lewm_fast import build_lewm
from lewm_fast.planning import RolloutEngine
from lewm_fast.reference import CEMSolver, sample_candidates

IMPLS = ["fast", "fast_graph", "fast_bf16", "fast_bf16_graph", "reference", "compiled_reference"]
N, T, H = 300, 5, 3


@pytest.fixture(scope="module")
def model(device):
    torch.manual_seed(0)
    m = build_lewm(action_dim=2).to(device).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # AdaLN layers are zero-initialised: give them weights so every block does real work
        for blk in m.predictor.transformer.layers:
            ada = blk.adaLN_modulation[-1]
            ada.weight.copy_(torch.randn(ada.weight.shape, generator=g) * 0.02)
            ada.bias.copy_(torch.randn(ada.bias.shape, generator=g) * 0.02)
    return m


@pytest.fixture(scope="module")
def problems(model, device):
    """Per env count: (ctx, hist, goal, candidates) and the reference costs."""
    out = {}
    for envs in (1, 50):
        g = torch.Generator(device=device).manual_seed(envs)
        ctx = torch.randn(envs, H, model.latent_dim, device=device, generator=g)
        hist = torch.randn(envs, H - 1, model.action_dim, device=device, generator=g)
        goal = torch.randn(envs, model.latent_dim, device=device, generator=g)
        mean = torch.zeros(envs, T, model.action_dim, device=device)
        cand = sample_candidates(mean, torch.ones_like(mean), N, g)
        out[envs] = (ctx, hist, goal, cand)
    return out


def _graphed(fn):
    """Capture fn() (static inputs) in a CUDA graph; returns replay -> static output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


@pytest.mark.parametrize("envs", [1, 50])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_rollout_costs(run_bench, benchmark, model, problems, device, is_cuda, envs, impl):
    if not is_cuda and (envs > 1 or "bf16" in impl or "graph" in impl):
        pytest.skip("CPU bench: 1 env, fp32, eager (bf16 and CUDA graphs need the Triton backend on CUDA)")
    ctx, hist, goal, cand = problems[envs]
    solver = CEMSolver(model, num_samples=N, horizon=T)
    if impl.startswith("fast"):
        engine = RolloutEngine(model, dtype=torch.bfloat16 if "bf16" in impl else None)
        fn = lambda: engine.costs(ctx, hist, goal, cand)  # noqa: E731
        if impl.endswith("graph"):
            fn = _graphed(fn)
        backend = engine.backend
    else:
        costs = torch.compile(solver.costs, dynamic=False) if impl == "compiled_reference" else solver.costs
        fn = lambda: costs(ctx, hist, goal, cand)  # noqa: E731
        backend = "reference"
    with torch.no_grad():
        want = solver.costs(ctx, hist, goal, cand)
        got = fn()
        rel_err = float(((got.float() - want).abs() / want.abs().clamp_min(1e-6)).max())
        benchmark.group = f"rollout_costs_{envs}env"
        run_bench(
            fn, rounds_cpu=7, rounds_cuda=50,
            op="cem_iteration_costs", impl=impl, backend=backend, envs=envs, num_samples=N, horizon=T, history=H,
            max_rel_cost_err=rel_err, torch_threads=torch.get_num_threads(),
        )
