"""Bytes autograd saves for one gradient step (costs forward, paper model, 300 samples, horizon 5, 1 env) on the
Triton path (meta tensors: shapes as on a GPU, no device needed), and what saving the window attention's softmax
probabilities would add (the backward kernels recompute them).

    python bench/gradient_memory.py
"""
import torch
from lewm_fast import build_lewm
from lewm_fast.ops.launches import record_launches
from lewm_fast.planning import RolloutEngine
import lewm_fast.ops.attention_grad as ag

for history in (1, 3):
    for dtype in (None, torch.bfloat16):
        with torch.device("meta"):
            model = build_lewm(action_dim=2).eval()
        eng = RolloutEngine(model, backend="triton", dtype=dtype)
        saved = {}
        probs = [0]
        orig = ag._WindowAttention.forward
        def fwd(ctx, qkv, heads, pre, nq, f, b):
            nq_ = qkv.shape[1] if nq is None else nq
            keys = qkv.shape[1] + (0 if pre is None else pre.shape[1])
            probs[0] += qkv.shape[0] * heads * nq_ * keys * 4
            return orig(ctx, qkv, heads, pre, nq, f, b)
        ag._WindowAttention.forward = staticmethod(fwd)
        def pack(t):
            if t.requires_grad or t.grad_fn is not None:  # activations (constants like the folded weights excluded)
                saved[id(t)] = t.numel() * t.element_size()
            return t
        d, a = eng.latent_dim, eng.action_dim
        ctx = torch.empty(1, history, d, device="meta"); goal = torch.empty(1, d, device="meta")
        cand = torch.empty(1, 300, 5, a, device="meta", requires_grad=True)
        with torch.enable_grad(), record_launches(132), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            c = eng.costs(ctx, torch.empty(1, history - 1, a, device="meta"), goal, cand)
        ag._WindowAttention.forward = orig
        print(f"history={history} dtype={dtype}: activations saved by autograd (per saved tensor object) "
              f"{sum(saved.values())/2**20:.1f} MiB; attention probabilities if saved: {probs[0]/2**20:.2f} MiB")
