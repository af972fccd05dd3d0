"""The LeWM training loop (SPEC §2): loss = MSE(next latent) + weight * SIGReg(latents), AdamW with linear warmup and
cosine decay, gradient clipping, bf16 autocast on CUDA (fp32 on CPU), checkpoints every epoch with exact resume, on one
process or data-parallel over several (torchrun: see ``distributed``).

Exact resume: batches come from a seeded permutation per epoch (``epoch_batches``), and a checkpoint stores the model,
optimizer, scheduler, global step, epoch, batch position and every RNG state (each rank's, and the SIGReg projections'
own generator), so a run killed and resumed from its last checkpoint takes the same steps with the same data and random
draws as an uninterrupted one.

Data parallelism: rank r of W trains on rows [r*b, (r+1)*b) of every global batch (b = batch_size / W), so the global
batches, and the step count, do not depend on W; a run may resume with another number of processes (the ranks' dropout
streams are then reseeded). BatchNorm and SIGReg see the global batch (``SyncBatchNorm1d``, ``SharedProjectionSIGReg``);
rank 0 alone reads and writes the run directory and prints.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..backends import resolve_backend, resolve_device
from ..io import (
    WEIGHTS_NAME, build_model, latest_checkpoint, load_state_dict_strict, load_trainer_state, read_weights,
    remove_partial_checkpoints, save_checkpoint,
)
from ..reference.lewm import LeWM
from ..reference.loss import LossTerms, lewm_loss, prediction_loss
from ..reference.sigreg import SIGReg as ReferenceSIGReg
from ..reference.vit import IMAGENET_MEAN, IMAGENET_STD
from .config import check_data_path, model_config, validate_train_config
from .distributed import Ranks, SharedProjectionSIGReg, local_batch_size, rank_seed, sync_batchnorm_
from .report import epoch_means, plot_losses, write_log
from .rng import rng_state, set_rng_state

STATE_FORMAT = 1
# settings a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("model", "data.env", "data.frameskip", "data.num_frames", "data.val_fraction", "batch_size", "seed")


# ---------------------------------------------------------------------------------------------------- building blocks
def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast for ``bf16``, or ``auto`` on CUDA; None (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_sigreg(cfg: DictConfig) -> nn.Module:
    """The fused SIGReg (``sigreg.fused=true``) or the eager reference."""
    s = cfg.sigreg
    if s.fused:
        from ..ops.sigreg import SIGReg as FusedSIGReg

        # the loop checks its loss every log_every steps; a per-step input check would sync the GPU every step
        return FusedSIGReg(knots=int(s.knots), num_proj=int(s.num_proj), backend=str(s.backend), check_finite=False)
    return ReferenceSIGReg(knots=int(s.knots), num_proj=int(s.num_proj))


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(
        model.parameters(), lr=float(o.lr), betas=tuple(float(b) for b in o.betas), eps=float(o.eps),
        weight_decay=float(o.weight_decay),
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(float(cfg.optim.warmup_fraction) * total_steps))
    fn = partial(warmup_cosine, total_steps=total_steps, warmup_steps=warmup, min_ratio=float(cfg.optim.min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), cut into full batches (the remainder is dropped
    so that BatchNorm and SIGReg never see a batch of one)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]


class EpochBatchSampler:
    """A DataLoader ``batch_sampler`` yielding this rank's rows of each batch of ``epoch_batches`` (rank r of W takes
    rows [r*b, (r+1)*b), b = batch_size / W); ``set_epoch`` picks the epoch and the batch to start from, so one loader
    (and its persistent workers) serves every epoch."""

    def __init__(self, num_items: int, batch_size: int, seed: int, ranks: Ranks):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.local_batch_size = local_batch_size(batch_size, ranks)
        self.rows = slice(ranks.rank * self.local_batch_size, (ranks.rank + 1) * self.local_batch_size)
        self.batches: List[List[int]] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        batches = epoch_batches(self.num_items, self.batch_size, self.seed, epoch)[start:]
        self.batches = [batch[self.rows] for batch in batches]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_loader(dataset: Dataset, sampler: EpochBatchSampler, cfg: DictConfig, device: torch.device) -> DataLoader:
    """The training DataLoader: ``data.num_workers`` persistent worker processes (each opens the HDF5 file itself),
    pinned host memory when training on CUDA."""
    workers = int(cfg.data.num_workers)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(int(cfg.seed)))


def loader_throughput(cfg: DictConfig, max_batches: int, max_seconds: float) -> Dict[str, Any]:
    """``dry_run=loader``: iterate this rank's training loader over epoch 1 (copying each batch to the training device)
    for at most ``max_batches`` batches or ``max_seconds`` after the first, writing nothing. -> samples/s over all
    ranks after the first batch (that one pays for starting the workers), the time to it, the samples and seconds
    timed, and the setup."""
    ranks = Ranks.current()
    with ranks.agree():
        validate_train_config(cfg)
        device = resolve_device(cfg.device)
        dataset, _ = open_datasets(cfg)
        sampler = EpochBatchSampler(len(dataset), int(cfg.batch_size), int(cfg.seed), ranks)
    sampler.set_epoch(0)
    loader = train_loader(dataset, sampler, cfg, device)
    start = time.perf_counter()
    first_s, batches, samples = 0.0, 0, 0
    for batch in loader:
        for value in batch.values():
            value.to(device, non_blocking=True)
        if batches == 0:
            first_s = time.perf_counter() - start
        else:
            samples += len(batch["pixels"])
        batches += 1
        if batches > max_batches or time.perf_counter() - start - first_s >= max_seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = int(ranks.sum_(torch.tensor(float(samples), device=device)))  # on the GPU for NCCL
    elapsed = max(ranks.gather(time.perf_counter() - start - first_s))
    return {"samples_per_s": samples / elapsed if elapsed > 0 else None, "first_batch_s": first_s, "samples": samples,
            "seconds": elapsed, "processes": ranks.world_size, "local_batch_size": sampler.local_batch_size,
            "num_workers": int(cfg.data.num_workers), "pin_memory": device.type == "cuda", "device": str(device)}


def model_pixels(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Dataset frames -> ImageNet-normalised float (B,T,3,S,S). uint8 frames (B,T,3,H,W) or (B,T,H,W,3) are normalised
    here; float frames are taken as already normalised. Frames of another size are resized (bilinear, antialiased)."""
    if pixels.dim() != 5:
        raise ValueError(f"batch['pixels'] must be (B,T,3,H,W) or (B,T,H,W,3), got shape {tuple(pixels.shape)}")
    if pixels.dtype == torch.uint8:
        if pixels.shape[2] != 3 and pixels.shape[-1] == 3:
            pixels = pixels.movedim(-1, 2)
        x = pixels.float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
        pixels = (x - mean) / std
    if pixels.shape[2] != 3:
        raise ValueError(f"batch['pixels'] must have 3 channels, got shape {tuple(pixels.shape)}")
    if pixels.shape[-2:] != (image_size, image_size):
        b, t = pixels.shape[:2]
        flat = F.interpolate(pixels.flatten(0, 1), size=(image_size, image_size), mode="bilinear", antialias=True,
                             align_corners=False)
        pixels = flat.view(b, t, 3, image_size, image_size)
    return pixels.float()


def normalization_info(dataset: Dataset, cfg: DictConfig, val_dataset: Optional[Dataset] = None) -> Dict[str, Any]:
    """What evaluation needs to act with the trained model: the env, frameskip and the statistics the dataset
    normalised actions (and proprioception) with, per env dimension (``dataset.stats``, a ``lewm_fast.data.Stats``);
    for an episode file, its path and the episodes held out from training (``lewm-eval dataset=`` draws goals there)."""
    stats = getattr(dataset, "stats", None)
    if stats is None or not hasattr(stats, "action_mean") or not hasattr(stats, "action_std"):
        raise ValueError(
            "the training dataset must expose .stats with action_mean and action_std (the statistics its actions were "
            "normalised with, as lewm_fast.data.SequenceDataset does), so that lewm-eval can un-normalise planned actions"
        )
    out: Dict[str, Any] = {"env": str(cfg.data.env), "frameskip": int(cfg.data.frameskip)}
    for key in ("action", "proprio"):
        if hasattr(stats, f"{key}_mean"):
            out[key] = {
                "mean": [float(v) for v in getattr(stats, f"{key}_mean")],
                "std": [float(v) for v in getattr(stats, f"{key}_std")],
            }
            out[f"{key}_dim"] = len(out[key]["mean"])  # per env step; lewm-eval checks the env against them
    if isinstance(getattr(dataset, "path", None), Path) and hasattr(dataset, "episode_ids"):
        held_out = getattr(val_dataset, "episode_ids", [])
        out["data"] = {"path": str(dataset.path.resolve()), "held_out_episodes": sorted(held_out)}
    return out


def open_datasets(cfg: DictConfig) -> Tuple[Dataset, Optional[Dataset]]:
    """``lewm_fast.data.SequenceDataset`` over ``data.path`` (the config's frames, frameskip and image size), split by
    episode into training and held-out sequences (``data.val_fraction``; held-out None when 0). ``data.path`` may be a
    lewm_fast episode file or a stable-worldmodel HDF5 file (columns mapped by ``data.columns``); a file that records
    no environment (stable-worldmodel's) takes ``data.env`` as its environment. The held-out set shares the training
    set's statistics (those of the whole file). NaN actions before an episode's last step are read as 0 (stable-
    worldmodel's convention) and reported once by rank 0, or refused with ``data.nan_actions=error`` (ValueError)."""
    path = check_data_path(cfg)
    from ..data import SequenceDataset, read_layout, read_stats_and_nan_actions, split_episodes
    from ..data.h5format import open_h5

    columns = OmegaConf.to_container(cfg.data.columns) if "columns" in cfg.data else None
    with open_h5(path) as f:
        layout = read_layout(f, columns=columns)
        stats, nan_actions = read_stats_and_nan_actions(f, layout)
    if nan_actions and cfg.data.nan_actions == "error":
        raise ValueError(f"{nan_actions.describe()}; data.nan_actions=error refuses such a file (data.nan_actions=zero "
                         "trains with them read as 0, as stable-worldmodel does)")
    if nan_actions and Ranks.current().is_main:
        tqdm.write(f"note: {nan_actions.describe()}; they are read as 0, as stable-worldmodel's training does "
                   "(data.nan_actions=error refuses such a file)")
    train_ids, val_ids = split_episodes(layout.num_episodes, float(cfg.data.val_fraction), int(cfg.seed))
    kwargs = dict(num_frames=int(cfg.data.num_frames), frameskip=int(cfg.data.frameskip), image_size=int(cfg.model.image_size),
                  columns=columns, env=None if layout.env else str(cfg.data.env))
    train = SequenceDataset(str(path), episodes=train_ids, stats=stats, **kwargs)
    if not val_ids:
        return train, None
    try:
        return train, SequenceDataset(str(path), episodes=val_ids, stats=stats, **kwargs)
    except ValueError as exc:
        raise ValueError(f"the {len(val_ids)} held-out episode(s) of data.val_fraction={cfg.data.val_fraction} form no "
                         f"training sequence ({exc}); raise data.val_fraction or set it to 0") from None


class Objective(nn.Module):
    """The training loss as a module, ``(pixels, actions) -> LossTerms``: what DistributedDataParallel wraps (its
    forward is where DDP arms the gradient all-reduce)."""

    def __init__(self, model: LeWM, sigreg: nn.Module, weight: float):
        super().__init__()
        self.model, self.sigreg, self.weight = model, sigreg, weight

    def forward(self, pixels: torch.Tensor, actions: torch.Tensor) -> LossTerms:
        return lewm_loss(self.model, pixels, actions, self.sigreg, self.weight)


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """``Trainer(cfg, dataset=None, val_dataset=None).fit() -> summary dict``. ``cfg`` is a composed ``train`` config
    (see ``compose_train_config``); without ``dataset``, ``open_datasets(cfg)`` gives both (the held-out split of
    ``data.val_fraction``); with it, ``val_dataset`` (or none) is the held-out set. Items are dicts with ``pixels``
    (T,3,H,W) and ``action`` (T, frameskip*A), T = ``data.num_frames``.

    With torch.distributed initialised (``torchrun``; see ``distributed.process_group``) the trainer is one rank of a
    data-parallel run: every rank constructs it and calls the same methods, which are then collective."""

    def __init__(self, cfg: DictConfig, dataset: Optional[Dataset] = None, val_dataset: Optional[Dataset] = None):
        self.ranks = Ranks.current()
        with self.ranks.agree():
            validate_train_config(cfg)
            self.cfg = cfg
            self.device = resolve_device(cfg.device)
            self.amp_dtype = autocast_dtype(cfg.precision, self.device)
            if dataset is None:
                dataset, val_dataset = open_datasets(cfg)
            self.dataset, self.val_dataset = dataset, val_dataset
            data_env = getattr(self.dataset, "env_name", cfg.data.env)
            if data_env != cfg.data.env:
                raise ValueError(f"data.env={cfg.data.env} but the dataset holds {data_env!r} episodes; pass data={data_env}")
            self.normalization = normalization_info(self.dataset, cfg, self.val_dataset)

            first = self.dataset[0]
            width = int(first["action"].shape[-1])
            frameskip = int(cfg.data.frameskip)
            if width % frameskip:
                raise ValueError(f"dataset actions have width {width}, not a multiple of data.frameskip={frameskip}")
            if int(first["action"].shape[0]) != int(cfg.data.num_frames):
                raise ValueError(f"dataset items hold {first['action'].shape[0]} frames but "
                                 f"data.num_frames={cfg.data.num_frames}")
            self.batch_size = int(cfg.batch_size)
            self.steps_per_epoch = len(self.dataset) // self.batch_size
            if self.steps_per_epoch == 0:
                raise ValueError(
                    f"the dataset holds {len(self.dataset)} sequences, fewer than batch_size={self.batch_size}; "
                    "collect more episodes or lower batch_size"
                )
            self.sampler = EpochBatchSampler(len(self.dataset), self.batch_size, int(cfg.seed), self.ranks)
        self.total_steps = int(cfg.epochs) * self.steps_per_epoch
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(cfg.out) if cfg.out else Path("runs") / self.ranks.broadcast(stamp)

        seed = int(cfg.seed)
        torch.manual_seed(seed)
        self.model: LeWM = build_model(model_config(cfg, action_dim=width // frameskip)).to(self.device)
        self.sigreg = build_sigreg(cfg).to(self.device)
        self.sigreg_backend = resolve_backend(str(cfg.sigreg.backend), self.device) if cfg.sigreg.fused else "reference"
        self.projections = torch.Generator(self.device).manual_seed(seed)  # the same on every rank
        shared = SharedProjectionSIGReg(self.sigreg, self.projections, fused=bool(cfg.sigreg.fused))
        self.objective: nn.Module = Objective(self.model, shared, float(cfg.sigreg.weight))
        if self.ranks.active:
            sync_batchnorm_(self.model)
            self.objective = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            torch.manual_seed(rank_seed(seed, self.ranks.rank, 0))  # each rank its own dropout masks
        if cfg.compile:
            self.objective = torch.compile(self.objective)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)

        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: List[Dict[str, float]] = []
        self.val_history: List[Dict[str, float]] = []  # per epoch: the held-out prediction loss
        self.train_time_s = 0.0
        self._pending: List[tuple] = []
        self._prepared = False

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> Dict[str, Any]:
        """What a checkpoint stores besides the weights (collective: it gathers every rank's RNG state)."""
        rngs = self.ranks.gather(rng_state())
        return {
            "format": STATE_FORMAT,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs[0],
            "rank_rng": rngs[1:],  # ranks 1.. of a data-parallel run
            "projection_rng": self.projections.get_state(),
            "history": list(self.history),
            "val_history": list(self.val_history),
            "train_time_s": self.train_time_s,
            "dataset_sequences": len(self.dataset),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self) -> Optional[Path]:
        """Write a checkpoint (rank 0; the others take part in gathering the state) -> its path (None off rank 0)."""
        self._flush()
        state = self.trainer_state()
        if not self.ranks.is_main:
            return None
        return save_checkpoint(self.run_dir, self.model, state, self.normalization, keep=int(self.cfg.keep_checkpoints))

    def _read_checkpoint(self, checkpoint: Path) -> Dict[str, Any]:
        """The trainer state and weights of a training checkpoint, checked against this run's settings and data."""
        state = load_trainer_state(checkpoint)
        saved = OmegaConf.create(state["config"])
        for key in RESUME_KEYS:
            a, b = OmegaConf.select(saved, key), OmegaConf.select(self.cfg, key)
            if OmegaConf.is_config(a):
                a, b = OmegaConf.to_container(a, resolve=True), OmegaConf.to_container(b, resolve=True)
            if a != b:
                raise ValueError(f"cannot resume {checkpoint}: it was trained with {key}={a!r}, this run has {key}={b!r}")
        if int(state["dataset_sequences"]) != len(self.dataset):
            raise ValueError(
                f"cannot resume {checkpoint}: it was trained on a dataset of {state['dataset_sequences']} sequences, this "
                f"run's dataset holds {len(self.dataset)}; resuming exactly needs the same data"
            )
        return {"state": state, "weights": read_weights(checkpoint / WEIGHTS_NAME)}

    def _load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Load model, optimizer, scheduler, counters, log and RNG states (from ``_read_checkpoint``). This rank takes
        its own saved RNG state when the run had as many ranks; otherwise rank 0 takes rank 0's and the others are
        reseeded (data order and projections do not depend on the number of ranks)."""
        state = checkpoint["state"]
        load_state_dict_strict(self.model, checkpoint["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.history = list(state["history"])
        self.val_history = list(state.get("val_history", []))
        self.train_time_s = float(state["train_time_s"])
        rngs = [state["rng"], *state.get("rank_rng", [])]
        if len(rngs) == self.ranks.world_size or self.ranks.is_main:
            set_rng_state(rngs[self.ranks.rank])
        else:
            torch.manual_seed(rank_seed(int(self.cfg.seed), self.ranks.rank, self.global_step))
        if "projection_rng" in state:
            self.projections.set_state(state["projection_rng"])
        else:  # a checkpoint from before the projections had their own generator
            self.projections.manual_seed(rank_seed(int(self.cfg.seed), 0, self.global_step))

    # ------------------------------------------------------------------ steps
    def _inputs(self, batch: Dict[str, torch.Tensor]):
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        actions = batch["action"].to(self.device, non_blocking=True).float()
        return model_pixels(pixels, int(self.cfg.model.image_size)), actions

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> tuple[LossTerms, torch.Tensor]:
        """One optimisation step on this rank's rows of a batch; -> (detached loss terms: the prediction loss of these
        rows, SIGReg of the global batch; the gradient norm before clipping)."""
        pixels, actions = self._inputs(batch)
        with self._autocast():
            terms = self.objective(pixels, actions)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip) if clip is not None else math.inf)
        self.optimizer.step()
        self.scheduler.step()
        return LossTerms(*(t.detach().float() for t in terms)), grad_norm.detach().float()

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        """Mean next-latent MSE over the held-out sequences (eval mode: no dropout, BatchNorm running statistics; no
        random draw, so an exact resume stays exact); None without a held-out set. Data-parallel: each rank takes every
        world_size-th sequence and the sums are all-reduced, so every rank gets the value of the whole set."""
        if self.val_dataset is None:
            return None
        was_training = self.model.training
        self.model.eval()
        mine = range(self.ranks.rank, len(self.val_dataset), self.ranks.world_size)
        loader = DataLoader(self.val_dataset, batch_size=self.sampler.local_batch_size, sampler=list(mine),
                            num_workers=int(self.cfg.data.num_workers), pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        total, count = torch.zeros((), device=self.device), 0
        for batch in loader:
            pixels, actions = self._inputs(batch)
            with self._autocast():
                loss = prediction_loss(self.model, pixels, actions)
            total += loss.float() * len(pixels)
            count += len(pixels)
        self.model.train(was_training)
        total, count = self.ranks.sum_(torch.stack((total, torch.tensor(float(count), device=self.device)))).tolist()
        return total / count

    def _record(self, terms: LossTerms, grad_norm: torch.Tensor, lr: float) -> None:
        """Queue this step's values; they are copied to the host every ``log_every`` steps (one sync, not one per step)."""
        self._pending.append((self.global_step, self.epoch + 1, lr, torch.stack([*terms, grad_norm])))

    def _flush(self) -> Optional[Dict[str, float]]:
        """Move the queued values to the history (averaged over ranks: the global batch's loss terms)."""
        if not self._pending:
            return None
        values = (self.ranks.sum_(torch.stack([p[3] for p in self._pending])) / self.ranks.world_size).cpu().tolist()
        for (step, epoch, lr, _), (loss, pred, sig, gnorm) in zip(self._pending, values):
            self.history.append(
                {"step": step, "epoch": epoch, "loss": loss, "pred_loss": pred, "sigreg_loss": sig, "lr": lr, "grad_norm": gnorm}
            )
        self._pending.clear()
        last = self.history[-1]
        if not math.isfinite(last["loss"]):
            raise FloatingPointError(
                f"the loss became {last['loss']} at step {last['step']}; lower optim.lr or check the data "
                f"(last finite checkpoint: {latest_checkpoint(self.run_dir)})"
            )
        return last

    # ------------------------------------------------------------------ loop
    def prepare(self) -> None:
        """Make the run directory ready (rank 0): resume from its last checkpoint (``resume=true``) or refuse to
        overwrite one; write ``train_config.yaml``. Every rank then loads the checkpoint rank 0 read, and the ranks check
        that they share the config and the SIGReg projections. ``fit`` calls it when it has not run (errors here are the
        user's: ValueError)."""
        if self._prepared:
            return
        with self.ranks.agree():
            checkpoint = self._prepare_run_dir() if self.ranks.is_main else None
        checkpoint = self.ranks.broadcast(checkpoint)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        self.ranks.check_same("the training config", OmegaConf.to_yaml(self.cfg, resolve=True), hint=(
            "start every process with the same command line; with resume=true each machine reads the run's saved "
            f"settings from {self.run_dir}, so put it on a filesystem all machines see or repeat the whole command line"))
        self.ranks.check_same("the SIGReg projections", self.projections.get_state().tolist())
        self._prepared = True

    def _prepare_run_dir(self) -> Optional[Dict[str, Any]]:
        """-> the checkpoint to resume from (``_read_checkpoint``), or None."""
        remove_partial_checkpoints(self.run_dir)
        latest = latest_checkpoint(self.run_dir)
        checkpoint = None
        if self.cfg.resume:
            if latest is not None:
                checkpoint = self._read_checkpoint(latest)
                state = checkpoint["state"]
                tqdm.write(f"resumed from {latest} (step {state['global_step']}, epoch {int(state['epoch']) + 1})")
            else:
                tqdm.write(f"resume=true but {self.run_dir} has no checkpoint yet: starting from scratch")
        elif latest is not None:
            raise ValueError(
                f"{self.run_dir} already holds checkpoints (latest {latest.name}); pass resume=true to continue that run "
                "or choose a new out=<dir>"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "train_config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        return checkpoint

    def fit(self) -> Dict[str, Any]:
        """Train to ``epochs`` (from the last checkpoint when resuming); write checkpoints, train_log.json and
        loss_curves.png into the run directory. -> the summary written to train_log.json."""
        self.prepare()
        cfg = self.cfg
        epochs = int(cfg.epochs)
        log_every, save_every = int(cfg.log_every), int(cfg.save_every_steps)
        main = self.ranks.is_main
        self.model.train()
        loader = train_loader(self.dataset, self.sampler, cfg, self.device)
        while self.epoch < epochs:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{epochs}",
                       dynamic_ncols=True, leave=True, disable=not main)
            t0 = time.perf_counter()
            for batch in loader:
                lr = self.optimizer.param_groups[0]["lr"]
                terms, grad_norm = self.train_step(batch)
                self.global_step += 1
                self.batch_in_epoch += 1
                self._record(terms, grad_norm, lr)
                bar.update(1)
                if self.global_step % log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                    last = self._flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", pred=f"{last['pred_loss']:.4f}",
                                    sigreg=f"{last['sigreg_loss']:.3f}", lr=f"{last['lr']:.2e}")
                if save_every and self.global_step % save_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                    self.train_time_s += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save()
            bar.close()
            self.train_time_s += time.perf_counter() - t0
            self.epoch += 1
            self.batch_in_epoch = 0
            val = self.validate()
            if val is not None:
                self.val_history.append({"epoch": self.epoch, "step": self.global_step, "val_pred_loss": val})
            path = self.save()
            means = epoch_means([r for r in self.history if r["epoch"] == self.epoch])[0]
            if main:
                tqdm.write(
                    f"epoch {self.epoch}/{epochs}: loss {means['loss']:.4f} (pred {means['pred_loss']:.4f}, "
                    f"sigreg {means['sigreg_loss']:.3f})" + (f", held-out pred {val:.4f}" if val is not None else "")
                    + f" -> {path}"
                )
        return self.finish()

    def finish(self) -> Dict[str, Any]:
        """Write train_log.json and loss_curves.png (rank 0); -> the summary."""
        self._flush()
        latest = latest_checkpoint(self.run_dir) if self.ranks.is_main else None
        summary = {
            "run_dir": str(self.run_dir),
            "checkpoint": str(latest) if latest else None,
            "device": str(self.device),
            "world_size": self.ranks.world_size,
            "precision": "bf16-autocast" if self.amp_dtype is not None else "fp32",
            "sigreg": {"fused": bool(self.cfg.sigreg.fused), "backend": self.sigreg_backend},
            "compiled": bool(self.cfg.compile),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "dataset_sequences": len(self.dataset),
            "val_sequences": len(self.val_dataset) if self.val_dataset is not None else 0,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            "epochs_done": self.epoch,
            "train_time_s": self.train_time_s,
            "steps_per_s": self.global_step / self.train_time_s if self.train_time_s > 0 else None,
            "samples_per_s": self.global_step * self.batch_size / self.train_time_s if self.train_time_s > 0 else None,
            "epochs": epoch_means(self.history, self.val_history),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "history": self.history,
        }
        if self.ranks.is_main:
            write_log(self.run_dir / "train_log.json", summary)
            if self.history:
                plot_losses(self.run_dir / "loss_curves.png", self.history, float(self.cfg.sigreg.weight), self.val_history)
        return summary


def train(cfg: DictConfig, dataset: Optional[Dataset] = None) -> Dict[str, Any]:
    """Build a ``Trainer`` and run it; -> summary (also in ``<out>/train_log.json``)."""
    return Trainer(cfg, dataset).fit()

