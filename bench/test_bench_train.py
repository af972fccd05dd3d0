"""One lewm-train step (``Trainer.train_step``: forward, backward, gradient clipping, AdamW, LR schedule) with the fused
vs the reference SIGReg, eager vs ``compile=true`` (torch.compile of the loss), in the same run.

CUDA: the paper preset (ViT-tiny/14 at 224 px, 6-block predictor, ~18M parameters), batch 128, bf16 autocast. CPU: the
cpu preset (the cpu_small model at 64 px), batch 16, fp32. The batch is synthetic (uint8 frames, 4 per sequence) and
already on the device: the data loader is not timed (``lewm-train ... dry_run=loader`` measures that).

Recorded in ``extra_info``: samples_per_s (batch / median step time), peak_extra_bytes (memory allocated above what
existed before the step, at its peak; measured as in test_bench_sigreg: ``torch.cuda.max_memory_allocated`` on CUDA,
PyTorch's CPU memory timeline on CPU), the CPU model (lscpu), torch version, thread count and the machine's 1-minute
load average when the test started (CPU timings on a shared machine are only as good as that is low).
"""

from __future__ import annotations

import os
import platform
import subprocess
from types import SimpleNamespace

import pytest
import torch
from test_bench_sigreg import _peak_extra_bytes

from lewm_fast.training import Trainer, compose_train_config

PRESET = {"cuda": ("preset=paper", 128), "cpu": ("preset=cpu", 16)}
ROUNDS = {"cuda": 20, "cpu": 5}
FRAMES, ACTION_WIDTH = 4, 10  # data.num_frames, frameskip 5 x 2-d actions


class SyntheticSequences(torch.utils.data.Dataset):
    """Random uint8 frames and actions shaped like SequenceDataset items, with the .stats a Trainer records."""

    def __init__(self, n: int, image_size: int):
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randint(0, 256, (n, FRAMES, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        self.action = torch.randn(n, FRAMES, ACTION_WIDTH, generator=g)
        self.stats = SimpleNamespace(action_mean=[0.0, 0.0], action_std=[1.0, 1.0])
        self.env_name = "two_room"

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        return {"pixels": self.pixels[i], "action": self.action[i]}


def cpu_model() -> str:
    """lscpu's "Model name" (platform.processor() where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("sigreg", ["reference", "fused"])
def test_train_step(benchmark, device, synced, tmp_path, sigreg, mode):
    load = os.getloadavg()[0]
    preset, batch_size = PRESET[device.type]
    cfg = compose_train_config([preset, f"batch_size={batch_size}", f"out={tmp_path}", "device=" + device.type,
                                f"sigreg.fused={sigreg == 'fused'}", f"compile={mode == 'compiled'}"])
    data = SyntheticSequences(batch_size, int(cfg.model.image_size))
    trainer = Trainer(cfg, data)
    batch = {k: v.to(device) for k, v in torch.utils.data.default_collate([data[i] for i in range(batch_size)]).items()}
    step = synced(lambda: trainer.train_step(batch))
    try:
        step()  # warm-up: compiles (compile=true), autotunes
    except Exception as exc:  # torch.compile needs a working toolchain; record why it could not run
        if mode != "compiled":
            raise
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    peak, method = _peak_extra_bytes(step, device)
    benchmark.group = f"train step {preset} B={batch_size} {'bf16' if trainer.amp_dtype else 'fp32'}"
    benchmark.extra_info.update(
        sigreg=sigreg, backend=trainer.sigreg_backend, mode=mode, preset=preset, batch=batch_size,
        image_size=int(cfg.model.image_size), precision="bf16-autocast" if trainer.amp_dtype else "fp32",
        num_parameters=sum(p.numel() for p in trainer.model.parameters()), device=str(device),
        cpu_model=cpu_model(), torch=torch.__version__, threads=torch.get_num_threads(), load_average=load,
        peak_extra_bytes=peak, peak_method=method,
    )
    benchmark.pedantic(step, rounds=ROUNDS[device.type], iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # --benchmark-disable: nothing was timed
        benchmark.extra_info["samples_per_s"] = batch_size / benchmark.stats.stats.median
