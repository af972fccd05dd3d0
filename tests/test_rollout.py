"""Rollout semantics (SPEC §1.5): context pairing, window of the last `num_frames` latents, encode/predict shapes."""

import pytest
import torch


def manual_rollout(model, emb_ctx, action_history, candidates):
    """Step-by-step transcription of SPEC §1.5 through the public predict(), one (B*S) row batch at a time."""
    b, s, h, d = emb_ctx.shape
    actions = torch.cat([action_history, candidates], dim=2).flatten(0, 1)
    act_emb = model.action_encoder(actions)
    latents = list(emb_ctx.flatten(0, 1).unbind(1))
    w = model.history_size
    for _ in range(candidates.shape[2]):
        idx = list(range(len(latents)))[-w:]
        window = torch.stack([latents[i] for i in idx], 1)
        latents.append(model.predict(window, act_emb[:, idx])[:, -1])
    return torch.stack(latents, 1).view(b, s, -1, d)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_rollout_matches_step_by_step_spec(tiny_model, h):
    g = torch.Generator().manual_seed(h)
    b, s, t, a, d = 2, 3, 5, tiny_model.action_dim, tiny_model.latent_dim
    ctx = torch.randn(b, s, h, d, generator=g)
    hist = torch.randn(b, s, h - 1, a, generator=g)
    cand = torch.randn(b, s, t, a, generator=g)
    with torch.no_grad():
        out = tiny_model.rollout(ctx, hist, cand)
        want = manual_rollout(tiny_model, ctx, hist, cand)
    assert out.shape == (b, s, h + t, d)
    assert torch.equal(out[:, :, :h], ctx)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_candidate_t_only_affects_later_latents(tiny_model):
    g = torch.Generator().manual_seed(0)
    h, t, a, d = 3, 5, tiny_model.action_dim, tiny_model.latent_dim
    ctx, hist = torch.randn(1, 1, h, d, generator=g), torch.randn(1, 1, h - 1, a, generator=g)
    cand = torch.randn(1, 1, t, a, generator=g)
    with torch.no_grad():
        base = tiny_model.rollout(ctx, hist, cand)
        for step in range(t):
            bumped = cand.clone()
            bumped[:, :, step] += 1.0
            out = tiny_model.rollout(ctx, hist, bumped)
            # candidate `step` is paired with latent H-1+step, so it first changes latent H+step
            assert torch.equal(out[:, :, : h + step], base[:, :, : h + step])
            assert not torch.allclose(out[:, :, h + step], base[:, :, h + step])


def test_predictor_sees_at_most_num_frames(tiny_model):
    seen = []
    hook = tiny_model.predictor.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    d, a = tiny_model.latent_dim, tiny_model.action_dim
    with torch.no_grad():
        tiny_model.rollout(torch.randn(1, 2, 2, d), torch.randn(1, 2, 1, a), torch.randn(1, 2, 6, a))
    hook.remove()
    assert seen == [2, 3, 3, 3, 3, 3]


def test_encode_and_predict_shapes(tiny_model):
    px = torch.randn(2, 4, 3, 28, 28)
    act = torch.randn(2, 4, tiny_model.action_dim)
    with torch.no_grad():
        emb, act_emb = tiny_model.encode(px, act)
        pred = tiny_model.predict(emb[:, :3], act_emb[:, :3])
        info = tiny_model.encode({"pixels": px, "action": act})
    assert emb.shape == act_emb.shape == (2, 4, 32)
    assert pred.shape == (2, 3, 32)
    torch.testing.assert_close(info["emb"], emb)
    torch.testing.assert_close(info["act_emb"], act_emb)


def test_encode_interpolates_positions_for_other_sizes(tiny_model):
    with torch.no_grad():
        assert tiny_model.encode(torch.randn(1, 1, 3, 42, 42)).shape == (1, 1, 32)
