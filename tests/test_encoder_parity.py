"""lewm_fast's ViT equals transformers.ViTModel (when transformers is installed) for both key layouts and resized inputs."""

import pytest
import torch

from lewm_fast.reference.vit import ViTConfig, ViTEncoder, convert_vit_keys, preprocess_frames

transformers = pytest.importorskip("transformers")


def hf_pair(image_size=56, patch_size=14, layers=2):
    cfg = ViTConfig.from_size("tiny", patch_size=patch_size, image_size=image_size, num_hidden_layers=layers)
    ours = ViTEncoder(cfg).eval()
    hf_cfg = transformers.ViTConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        patch_size=patch_size,
        image_size=image_size,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        qkv_bias=True,
    )
    hf = transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval()
    return ours, hf


def load_hf_into_ours(ours, hf):
    hf_sd = hf.state_dict()
    ours.load_state_dict(hf_sd, strict=True)  # either layout: 4.x keys are renamed on load
    return hf_sd


@pytest.mark.parametrize("size", [56, 42, 70])
def test_matches_transformers_vit(size):
    torch.manual_seed(0)
    ours, hf = hf_pair()
    load_hf_into_ours(ours, hf)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        want = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        got = ours(x, interpolate_pos_encoding=True).last_hidden_state
    assert got.shape == want.shape == (3, 1 + (size // 14) ** 2, 192)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_loads_both_key_layouts():
    ours, hf = hf_pair()
    sd5 = convert_vit_keys(hf.state_dict(), "5.x")
    sd4 = convert_vit_keys(hf.state_dict(), "4.x")
    a, b = ViTEncoder(ours.config), ViTEncoder(ours.config)
    a.load_state_dict(sd5, strict=True)
    b.load_state_dict(sd4, strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_preprocess_frames_imagenet_normalisation():
    frames = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    x = preprocess_frames(frames)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    with pytest.raises(TypeError, match="uint8"):
        preprocess_frames(frames.float())
    with pytest.raises(ValueError, match="H, W, 3"):
        preprocess_frames(frames[..., :2])
