"""Object checkpoints (``torch.save(model, "<run>_object.ckpt")`` of a stable-worldmodel / le-wm LeWM) load into
lewm_fast with neither library importable and without running code from the file.

The pickled models are tests/swm_standins.py's classes renamed to the real module paths (registered in sys.modules only
while saving, as the real library would be) around a real transformers ViTModel built as ``vit_hf`` builds it.
"""

import contextlib
import importlib.util
import os
import pickle
import subprocess
import sys
import types

import pytest
import swm_standins as S
import torch
from conftest import randomize_
from torch import nn

from lewm_fast import CheckpointError, LeWM
from lewm_fast.io import TINY_CONFIG
from lewm_fast.reference.vit import convert_vit_keys

transformers = pytest.importorskip("transformers")

# where each generation of the code defines the classes: (LeWM's module, its name, the blocks' module, the predictor's name)
LAYOUTS = {
    "stable-worldmodel": ("stable_worldmodel.wm.lewm.lewm", "LeWM", "stable_worldmodel.wm.lewm.module", "Predictor"),
    "stable-worldmodel module_lewm": ("stable_worldmodel.wm.lewm.lewm", "LeWM", "stable_worldmodel.wm.lewm.module_lewm", "Predictor"),
    "stable-worldmodel lewm.py": ("stable_worldmodel.wm.lewm", "JEPA", "stable_worldmodel.wm.lewm", "ARPredictor"),
    "le-wm": ("jepa", "JEPA", "module", "ARPredictor"),
}
BLOCKS = (S.Transformer, S.ConditionalBlock, S.Attention, S.FeedForward, S.Embedder, S.MLP)
VIT_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")


def named(cls: type, qualname: str) -> type:
    """A subclass of ``cls`` that pickles as ``qualname`` ("pkg.module.Name")."""
    module, _, name = qualname.rpartition(".")
    return type(name, (cls,), {"__module__": module, "__qualname__": name})


@contextlib.contextmanager
def importable(classes: dict):
    """Register {"pkg.module.Name": class} and the packages above them in sys.modules, for the duration only."""
    modules = {qualname.rpartition(".")[0] for qualname in classes}
    packages = {".".join(m.split(".")[: i + 1]) for m in modules for i in range(m.count(".") + 1)}
    saved = {name: sys.modules.pop(name, None) for name in packages}
    sys.modules.update({name: types.ModuleType(name) for name in packages})
    for qualname, cls in classes.items():
        module, _, name = qualname.rpartition(".")
        setattr(sys.modules[module], name, cls)
    try:
        yield
    finally:
        for name, module in saved.items():
            sys.modules.pop(name)
            if module is not None:
                sys.modules[name] = module


def as_real_classes(model: nn.Module, layout: str) -> dict:
    """Give the model's stand-in modules the classes' real names in ``layout``; returns {"pkg.module.Name": class}."""
    lewm_module, lewm_name, blocks, predictor_name = LAYOUTS[layout]
    qualnames = {
        S.LeWM: f"{lewm_module}.{lewm_name}",
        S.Predictor: f"{blocks}.{predictor_name}",
        **{cls: f"{blocks}.{cls.__name__}" for cls in BLOCKS},
    }
    renamed = {cls: named(cls, qualname) for cls, qualname in qualnames.items()}
    for module in model.modules():
        module.__class__ = renamed.get(type(module), type(module))
    return {qualnames[cls]: new for cls, new in renamed.items()}


def standin() -> nn.Module:
    """A stand-in LeWM (the suite's tiny sizes, random weights) around a ViTModel as stable_pretraining's vit_hf builds it."""
    vit = transformers.ViTModel(
        transformers.ViTConfig(**{k: TINY_CONFIG[k] for k in VIT_FIELDS}), add_pooling_layer=False, use_mask_token=False
    )
    vit.config.interpolate_pos_encoding = True
    torch.manual_seed(0)
    return randomize_(S.build_standin(vit)).eval()


def save_object(model: nn.Module, path, layout: str = "stable-worldmodel", extra: dict | None = None, **save_kwargs) -> None:
    """``torch.save(model, path)`` with the model's classes importable under their real names only while saving."""
    with importable({**as_real_classes(model, layout), **(extra or {})}):
        torch.save(model, path, **save_kwargs)


def outputs(model: nn.Module) -> tuple:
    """(emb, act_emb, prediction) through stable-worldmodel's ``encode(info)`` or lewm_fast's ``encode(pixels, action)``."""
    g = torch.Generator().manual_seed(1)
    pixels, action = torch.randn(2, 3, 3, 28, 28, generator=g), torch.randn(2, 3, 10, generator=g)
    with torch.no_grad():
        if isinstance(model, LeWM):
            emb, act_emb = model.encode(pixels, action)
        else:
            info = model.encode({"pixels": pixels, "action": action})
            emb, act_emb = info["emb"], info["act_emb"]
        return emb, act_emb, model.predict(emb, act_emb)


def assert_same_model(loaded: LeWM, original: nn.Module) -> None:
    want = convert_vit_keys(original.state_dict(), "5.x", prefix="encoder.")
    got = loaded.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    for a, b in zip(outputs(loaded), outputs(original)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # torch.save's legacy format on test-made classes
@pytest.mark.parametrize("layout, legacy", [(layout, False) for layout in LAYOUTS] + [("le-wm", True)])
def test_loads_without_the_library_and_computes_the_same(tmp_path, layout, legacy):
    model = standin()
    model.predictor.pos_embedding.tag = "pickled with its attributes"  # through torch's _rebuild_parameter_with_state
    path = tmp_path / "lewm_epoch_1_object.ckpt"
    save_object(model, path, layout, _use_new_zipfile_serialization=not legacy)
    assert importlib.util.find_spec(LAYOUTS[layout][0].split(".")[0]) is None
    loaded = LeWM.from_pretrained(path)
    assert isinstance(loaded, LeWM) and not loaded.training
    assert not hasattr(loaded.predictor.pos_embedding, "tag")
    assert_same_model(loaded, model)
    predictor, encoder = loaded.config["predictor"], loaded.config["encoder"]
    assert (predictor["heads"], predictor["dim_head"], predictor["depth"], predictor["num_frames"]) == (4, 8, 2, 3)
    assert (encoder["num_attention_heads"], encoder["patch_size"], encoder["image_size"]) == (2, 14, 28)


def test_exports_to_a_checkpoint_folder(tmp_path):
    model = standin()
    save_object(model, tmp_path / "run_object.ckpt")
    LeWM.from_pretrained(tmp_path / "run_object.ckpt").save_pretrained(tmp_path / "folder")
    assert_same_model(LeWM.from_pretrained(tmp_path / "folder"), model)


class SIGReg(nn.Module):
    """The training loss a wrapper carries next to the model (its buffers are all that matter here)."""

    def __init__(self, knots: int = 17):
        super().__init__()
        self.register_buffer("t", torch.linspace(0, 3, knots))


class AttributeDict(dict):
    """Lightning's hyper-parameter dict."""


class NamedForward:
    """stable-pretraining's adapter that gives the user's forward function a ``__name__``."""

    __name__ = "forward"

    def __call__(self, module, batch, stage):
        return {}


class Module(nn.Module):
    """Stand-in of stable_pretraining.Module (a LightningModule) as a training script builds it around the world model."""

    def __init__(self, model: nn.Module, sigreg: nn.Module, hparams: dict):
        super().__init__()
        self.model, self.sigreg, self._hparams = model, sigreg, hparams
        self.forward = types.MethodType(NamedForward(), self)  # pickles as getattr(module, "forward")
        self._device, self._dtype, self._trainer = torch.device("cpu"), torch.float32, None
        self.optim = {"model_opt": {"modules": "model", "optimizer": {"type": "AdamW", "lr": 5e-5}}}


def test_loads_the_model_of_a_training_wrapper(tmp_path):
    model = standin()
    wrapper_classes = {
        "stable_pretraining.module.Module": named(Module, "stable_pretraining.module.Module"),
        "module.SIGReg": named(SIGReg, "module.SIGReg"),
        "lightning.fabric.utilities.data.AttributeDict": named(AttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
    }
    hparams = wrapper_classes["lightning.fabric.utilities.data.AttributeDict"]({"system.working_dir": "/runs"})
    wrapper = wrapper_classes["stable_pretraining.module.Module"](model, wrapper_classes["module.SIGReg"](), hparams)
    save_object(wrapper, tmp_path / "wrapped_object.ckpt", "le-wm", wrapper_classes)
    assert_same_model(LeWM.from_pretrained(tmp_path / "wrapped_object.ckpt"), model)


class Payload:
    """Calls ``call`` (a ``(function, args)`` pair) when unpickled, as a booby-trapped checkpoint would."""

    def __init__(self, call: tuple):
        self.call = call

    def __reduce__(self):
        return self.call


# each payload creates the marker file if it runs, and the regex its refusal must name it by
PAYLOADS = {
    "os.system": (lambda marker: (os.system, (f"touch {marker}",)), r"(posix|nt)\.system"),
    "eval": (lambda marker: (eval, (f"open({str(marker)!r}, 'w').close()",)), r"builtins\.eval"),
    "subprocess": (lambda marker: (subprocess.call, (["touch", str(marker)],)), r"subprocess\.call"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_in_the_file_is_refused_before_it_runs(tmp_path, payload):
    call, name = PAYLOADS[payload]
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(call(marker))))
    assert marker.exists()  # the payload is live: plain unpickling runs it
    marker.unlink()
    model = standin()
    model.predictor.transformer.layers[1].attn.hook = Payload(call(marker))
    save_object(model, tmp_path / "trapped_object.ckpt")
    with pytest.raises(CheckpointError, match=rf"refers to {name}, which is not a known LeWM class: .*without running code") as err:
        LeWM.from_pretrained(tmp_path / "trapped_object.ckpt")
    assert not marker.exists()
    assert "\n" not in str(err.value)


def test_an_unknown_class_is_refused_by_name(tmp_path):
    model = standin()
    custom = named(nn.Module, "mylab.layers.Custom")
    model.predictor.extra = custom()
    save_object(model, tmp_path / "custom_object.ckpt", extra={"mylab.layers.Custom": custom})
    with pytest.raises(CheckpointError, match=r"mylab\.layers\.Custom, .*export the model with stable-worldmodel as config\.json"):
        LeWM.from_pretrained(tmp_path / "custom_object.ckpt")


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: torch.save(standin().state_dict(), p), "holds a dict .*not a pickled model"),
        (lambda p: torch.save(standin().encoder, p), r"holds a transformers\.models\.vit\.modeling_vit\.ViTModel, not a pickled LeWM"),
        (lambda p: p.write_bytes(b"not a torch file"), "corrupt or not a torch file"),
        (lambda p: (save_object(standin(), p), p.write_bytes(p.read_bytes()[:5000])), "corrupt or not a torch file"),
    ],
    ids=["state dict", "not a LeWM", "not torch", "truncated"],
)
def test_files_that_are_not_object_checkpoints(tmp_path, write, match):
    path = tmp_path / "x_object.ckpt"
    write(path)
    with pytest.raises(CheckpointError, match=match) as err:
        LeWM.from_pretrained(path)
    assert "\n" not in str(err.value)
