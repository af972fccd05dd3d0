"""stable-worldmodel checkpoint folders: round trip, both encoder layouts, strict errors that name the keys."""

import json
import os
import stat

import pytest
import torch

from lewm_fast import CheckpointError, LeWM, build_model
from lewm_fast.io import read_weights

from conftest import tiny_config


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", tiny_model


def outputs(model):
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 3, 28, 28, generator=g)
    act = torch.randn(2, 3, model.action_dim, generator=g)
    with torch.no_grad():
        emb, act_emb = model.encode(px, act)
        return emb, model.predict(emb, act_emb)


def test_round_trip(saved):
    path, model = saved
    loaded = LeWM.from_pretrained(path)
    assert not loaded.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    for a, b in zip(outputs(model), outputs(loaded)):
        assert torch.equal(a, b)


def test_config_uses_stable_worldmodel_targets(saved):
    cfg = json.loads((saved[0] / "config.json").read_text())
    assert cfg["_target_"] == "stable_worldmodel.wm.lewm.LeWM"
    assert cfg["encoder"]["_target_"] == "stable_pretraining.backbone.utils.vit_hf"
    assert cfg["predictor"]["_target_"] == "stable_worldmodel.wm.lewm.module.Predictor"
    assert cfg["projector"]["norm_fn"] == {"_target_": "torch.nn.BatchNorm1d", "_partial_": True}


def test_4x_layout_saves_and_loads(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, encoder_layout="4.x")
    keys = read_weights(tmp_path / "weights.pt").keys()
    assert "encoder.encoder.layer.0.attention.attention.query.weight" in keys
    assert not any(k.startswith("encoder.layers.") for k in keys)
    assert torch.equal(outputs(LeWM.from_pretrained(tmp_path))[1], outputs(tiny_model)[1])


def test_compiled_prefix_is_stripped(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    sd = torch.load(tmp_path / "weights.pt")
    torch.save({k.replace("predictor.", "predictor._orig_mod."): v for k, v in sd.items()}, tmp_path / "weights.pt")
    assert torch.equal(outputs(LeWM.from_pretrained(tmp_path))[1], outputs(tiny_model)[1])


def test_pickled_module_needs_opt_in(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    torch.save(tiny_model, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        LeWM.from_pretrained(tmp_path)
    loaded = LeWM.from_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(outputs(loaded)[1], outputs(tiny_model)[1])


def test_missing_unexpected_and_wrong_shape_keys_are_named(saved):
    path, _ = saved
    sd = torch.load(path / "weights.pt")
    sd.pop("predictor.pos_embedding")
    sd["predictor.extra.weight"] = torch.zeros(1)
    sd["action_encoder.embed.2.bias"] = torch.zeros(5)
    torch.save(sd, path / "weights.pt")
    with pytest.raises(CheckpointError) as err:
        LeWM.from_pretrained(path)
    msg = str(err.value)
    assert "missing keys (1): ['predictor.pos_embedding']" in msg
    assert "unexpected keys (1): ['predictor.extra.weight']" in msg
    assert "action_encoder.embed.2.bias: checkpoint (5,) vs model (32,)" in msg


def test_config_weights_mismatch(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["predictor"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys \(13\)"):
        LeWM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: (p / "weights.pt").write_bytes(b"not a torch file"), "corrupt|not a plain state dict"),
        (lambda p: (p / "weights.pt").unlink(), "no weights.pt"),
        (lambda p: (p / "config.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "config.json").write_text('{"_target_": "evil.module.Thing"}'), "cannot build"),
        (lambda p: torch.save([1, 2], p / "weights.pt"), "does not hold a state dict"),
    ],
)
def test_corrupt_checkpoints(tmp_path, tiny_model, corrupt, match):
    tiny_model.save_pretrained(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        LeWM.from_pretrained(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LeWM.from_pretrained(tmp_path / "nope")


def test_model_without_config_cannot_be_saved(tmp_path, tiny_model):
    bare = LeWM(tiny_model.encoder, tiny_model.predictor, tiny_model.action_encoder, tiny_model.projector, tiny_model.pred_proj)
    with pytest.raises(CheckpointError, match="no config"):
        bare.save_pretrained(tmp_path)


def test_build_is_deterministic_under_seed():
    torch.manual_seed(3)
    a = build_model(tiny_config())
    torch.manual_seed(3)
    b = build_model(tiny_config())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_files_get_the_umask_mode_like_any_new_file(tmp_path, tiny_model, umask):
    """The atomic write goes through mkstemp (0600); the files must end with the mode open() would give them."""
    previous = os.umask(umask)
    try:
        tiny_model.save_pretrained(tmp_path / "ckpt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("config.json", "weights.pt"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == expected, name
    assert not [p.name for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]
