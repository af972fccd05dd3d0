"""Bad input to the public model API raises TypeError/ValueError saying what was expected; nothing broadcasts silently."""

import pytest
import torch


def test_pixels(tiny_model):
    with pytest.raises(TypeError, match="floating"):
        tiny_model.encode(torch.zeros(1, 2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="5 dimensions"):
        tiny_model.encode(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="3 channels"):
        tiny_model.encode(torch.randn(1, 2, 4, 28, 28))
    bad = torch.randn(1, 2, 3, 28, 28)
    bad[0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny_model.encode(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model.encode([[0.0]])


def test_actions(tiny_model):
    px = torch.randn(1, 2, 3, 28, 28)
    with pytest.raises(ValueError, match="last dimension 10"):
        tiny_model.encode(px, torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="match pixels"):
        tiny_model.encode(px, torch.randn(1, 3, 10))
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny_model.embed_actions(torch.full((1, 2, 10), float("inf")))
    with pytest.raises(TypeError, match="floating"):
        tiny_model.embed_actions(torch.ones(1, 2, 10, dtype=torch.int32))


def test_predict(tiny_model):
    emb = torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match="last dimension 32"):
        tiny_model.predict(torch.randn(2, 3, 31), emb)
    with pytest.raises(ValueError, match="share"):
        tiny_model.predict(emb, torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="at most 3"):
        tiny_model.predict(torch.randn(2, 4, 32), torch.randn(2, 4, 32))


def test_rollout(tiny_model):
    ctx, hist, cand = torch.randn(1, 2, 3, 32), torch.randn(1, 2, 2, 10), torch.randn(1, 2, 5, 10)
    with pytest.raises(ValueError, match="share"):
        tiny_model.rollout(ctx, hist, torch.randn(1, 3, 5, 10))
    with pytest.raises(ValueError, match="H-1=2"):
        tiny_model.rollout(ctx, hist[:, :, :1], cand)
    with pytest.raises(ValueError, match="4 dimensions"):
        tiny_model.rollout(ctx[0], hist, cand)
    with pytest.raises(ValueError, match="last dimension 10"):
        tiny_model.rollout(ctx, hist, cand[..., :3])
