"""The state dict of a LeWM built from the paper's config has exactly the keys and shapes listed in SPEC.md §1."""

import pytest
import torch

from lewm_fast import build_lewm, build_model, default_config
from lewm_fast.reference.vit import convert_vit_keys, detect_vit_layout


def spec_layout(input_dim: int = 10) -> dict:
    """Keys and shapes written out from SPEC.md (tiny ViT, patch 14, 224 px; predictor 6x16x64; MLP 2048)."""
    d, h, mlp, proj = 192, 2048, 768, 2048
    s = {
        "encoder.embeddings.cls_token": (1, 1, d),
        "encoder.embeddings.position_embeddings": (1, 257, d),
        "encoder.embeddings.patch_embeddings.projection.weight": (d, 3, 14, 14),
        "encoder.embeddings.patch_embeddings.projection.bias": (d,),
        "encoder.layernorm.weight": (d,),
        "encoder.layernorm.bias": (d,),
    }
    for i in range(12):
        p = f"encoder.layers.{i}."
        for ln in ("layernorm_before", "layernorm_after"):
            s[p + ln + ".weight"] = (d,)
            s[p + ln + ".bias"] = (d,)
        for proj_name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[p + f"attention.{proj_name}.weight"] = (d, d)
            s[p + f"attention.{proj_name}.bias"] = (d,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (mlp, d), (mlp,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (d, mlp), (d,)
    for head in ("projector", "pred_proj"):
        s[f"{head}.net.0.weight"], s[f"{head}.net.0.bias"] = (proj, d), (proj,)
        for b in ("weight", "bias", "running_mean", "running_var"):
            s[f"{head}.net.1.{b}"] = (proj,)
        s[f"{head}.net.1.num_batches_tracked"] = ()
        s[f"{head}.net.3.weight"], s[f"{head}.net.3.bias"] = (d, proj), (d,)
    s["action_encoder.patch_embed.weight"], s["action_encoder.patch_embed.bias"] = (10, input_dim, 1), (10,)
    s["action_encoder.embed.0.weight"], s["action_encoder.embed.0.bias"] = (4 * d, 10), (4 * d,)
    s["action_encoder.embed.2.weight"], s["action_encoder.embed.2.bias"] = (d, 4 * d), (d,)
    s["predictor.pos_embedding"] = (1, 3, d)
    for i in range(6):
        p = f"predictor.transformer.layers.{i}."
        s[p + "adaLN_modulation.1.weight"], s[p + "adaLN_modulation.1.bias"] = (6 * d, d), (6 * d,)
        s[p + "attn.norm.weight"], s[p + "attn.norm.bias"] = (d,), (d,)
        s[p + "attn.to_qkv.weight"] = (3 * 16 * 64, d)
        s[p + "attn.to_out.0.weight"], s[p + "attn.to_out.0.bias"] = (d, 16 * 64), (d,)
        s[p + "mlp.net.0.weight"], s[p + "mlp.net.0.bias"] = (d,), (d,)
        s[p + "mlp.net.1.weight"], s[p + "mlp.net.1.bias"] = (h, d), (h,)
        s[p + "mlp.net.4.weight"], s[p + "mlp.net.4.bias"] = (d, h), (d,)
    s["predictor.transformer.norm.weight"], s["predictor.transformer.norm.bias"] = (d,), (d,)
    return s


@pytest.mark.parametrize("action_dim", [2, 3])
def test_state_dict_matches_spec_key_for_key(action_dim):
    model = build_model(default_config(action_dim=action_dim))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = spec_layout(input_dim=5 * action_dim)
    assert sorted(set(got) - set(want)) == []
    assert sorted(set(want) - set(got)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}


def test_4x_layout_conversion_is_a_bijection():
    sd = build_lewm().state_dict()
    old = convert_vit_keys(sd, "4.x", prefix="encoder.")
    assert detect_vit_layout(old, prefix="encoder.") == "4.x"
    assert "encoder.encoder.layer.0.attention.attention.query.weight" in old
    assert "encoder.encoder.layer.11.output.dense.weight" in old
    assert "encoder.encoder.layer.3.intermediate.dense.bias" in old
    assert "encoder.encoder.layer.3.attention.output.dense.bias" in old
    assert not any(k.startswith("encoder.layers.") for k in old)
    back = convert_vit_keys(old, "5.x", prefix="encoder.")
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)


def test_zero_init_adaln_and_identity_projections():
    model = build_lewm()
    for block in model.predictor.transformer.layers:
        assert torch.count_nonzero(block.adaLN_modulation[1].weight) == 0
        assert torch.count_nonzero(block.adaLN_modulation[1].bias) == 0
    t = model.predictor.transformer
    assert all(isinstance(m, torch.nn.Identity) for m in (t.input_proj, t.cond_proj, t.output_proj))
