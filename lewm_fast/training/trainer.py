"""The LeWM training loop (SPEC §2): loss = MSE(next latent) + weight * SIGReg(latents), AdamW with linear warmup and
cosine decay, gradient clipping, bf16 autocast on CUDA (fp32 on CPU), checkpoints every epoch with exact resume.

Exact resume: batches come from a seeded permutation per epoch (``epoch_batches``), and a checkpoint stores the model,
optimizer, scheduler, global step, epoch, batch position and every RNG state, so a run killed and resumed from its last
checkpoint takes the same steps with the same data and random draws as an uninterrupted one.
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
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..backends import resolve_backend
from ..checkpoint import build_model, load_state_dict_strict, read_weights
from ..reference.lewm import LeWM
from ..reference.loss import LossTerms, lewm_loss, prediction_loss
from ..reference.sigreg import SIGReg as ReferenceSIGReg
from ..reference.vit import IMAGENET_MEAN, IMAGENET_STD
from . import checkpointing as ckpt
from .config import check_data_path, model_config, validate_train_config
from .report import epoch_means, plot_losses, write_log

STATE_FORMAT = 1
# settings a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("model", "data.env", "data.frameskip", "data.num_frames", "data.val_fraction", "batch_size", "seed")


# ---------------------------------------------------------------------------------------------------- building blocks
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


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
        flat = F.interpolate(pixels.flatten(0, 1), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
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


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """(training, held-out) episode indices: ``round(val_fraction * num_episodes)`` episodes (at least 1, and at least
    1 left for training) drawn by a permutation seeded with ``seed``; none when val_fraction is 0."""
    if val_fraction <= 0 or num_episodes < 2:
        return list(range(num_episodes)), []
    n_val = min(max(1, round(val_fraction * num_episodes)), num_episodes - 1)
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def open_datasets(cfg: DictConfig) -> Tuple[Dataset, Optional[Dataset]]:
    """``lewm_fast.data.SequenceDataset`` over ``data.path`` (the config's frames, frameskip and image size), split by
    episode into training and held-out sequences (``data.val_fraction``; held-out None when 0). ``data.path`` may be a
    lewm_fast episode file or a stable-worldmodel HDF5 file (columns mapped by ``data.columns``); a file that records
    no environment (stable-worldmodel's) takes ``data.env`` as its environment. The held-out set shares the training
    set's statistics (those of the whole file)."""
    path = check_data_path(cfg)
    from ..data import SequenceDataset, read_layout
    from ..data.h5format import open_h5

    columns = OmegaConf.to_container(cfg.data.columns) if "columns" in cfg.data else None
    with open_h5(path) as f:
        layout = read_layout(f, columns=columns)
    train_ids, val_ids = split_episodes(layout.num_episodes, float(cfg.data.val_fraction), int(cfg.seed))
    kwargs = dict(num_frames=int(cfg.data.num_frames), frameskip=int(cfg.data.frameskip), image_size=int(cfg.model.image_size),
                  columns=columns, env=None if layout.env else str(cfg.data.env))
    train = SequenceDataset(str(path), episodes=train_ids, **kwargs)
    if not val_ids:
        return train, None
    try:
        return train, SequenceDataset(str(path), episodes=val_ids, stats=train.stats, **kwargs)
    except ValueError as exc:
        raise ValueError(f"the {len(val_ids)} held-out episode(s) of data.val_fraction={cfg.data.val_fraction} form no "
                         f"training sequence ({exc}); raise data.val_fraction or set it to 0") from None


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """``Trainer(cfg, dataset=None, val_dataset=None).fit() -> summary dict``. ``cfg`` is a composed ``train`` config
    (see ``compose_train_config``); without ``dataset``, ``open_datasets(cfg)`` gives both (the held-out split of
    ``data.val_fraction``); with it, ``val_dataset`` (or none) is the held-out set. Items are dicts with ``pixels``
    (T,3,H,W) and ``action`` (T, frameskip*A), T = ``data.num_frames``."""

    def __init__(self, cfg: DictConfig, dataset: Optional[Dataset] = None, val_dataset: Optional[Dataset] = None):
        validate_train_config(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.run_dir = Path(cfg.out) if cfg.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
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
            raise ValueError(f"dataset items hold {first['action'].shape[0]} frames but data.num_frames={cfg.data.num_frames}")
        self.batch_size = int(cfg.batch_size)
        self.steps_per_epoch = len(self.dataset) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset holds {len(self.dataset)} sequences, fewer than batch_size={self.batch_size}; "
                "collect more episodes or lower batch_size"
            )
        self.total_steps = int(cfg.epochs) * self.steps_per_epoch

        torch.manual_seed(int(cfg.seed))
        self.model: LeWM = build_model(model_config(cfg, action_dim=width // frameskip)).to(self.device)
        self.sigreg = build_sigreg(cfg).to(self.device)
        self.sigreg_backend = resolve_backend(str(cfg.sigreg.backend), self.device) if cfg.sigreg.fused else "reference"
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
        return {
            "format": STATE_FORMAT,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "history": list(self.history),
            "val_history": list(self.val_history),
            "train_time_s": self.train_time_s,
            "dataset_sequences": len(self.dataset),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self) -> Path:
        self._flush()
        return ckpt.save_checkpoint(
            self.run_dir, self.model, self.trainer_state(), self.normalization, keep=int(self.cfg.keep_checkpoints)
        )

    def restore(self, checkpoint: Path) -> None:
        """Load model, optimizer, scheduler, counters, log and RNG states from a training checkpoint."""
        state = ckpt.load_trainer_state(checkpoint)
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
        load_state_dict_strict(self.model, read_weights(checkpoint / "weights.pt"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.history = list(state["history"])
        self.val_history = list(state.get("val_history", []))
        self.train_time_s = float(state["train_time_s"])
        ckpt.set_rng_state(state["rng"])

    # ------------------------------------------------------------------ steps
    def _inputs(self, batch: Dict[str, torch.Tensor]):
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        actions = batch["action"].to(self.device, non_blocking=True).float()
        return model_pixels(pixels, int(self.cfg.model.image_size)), actions

    def train_step(self, batch: Dict[str, torch.Tensor]) -> tuple[LossTerms, torch.Tensor]:
        """One optimisation step; -> (detached loss terms, gradient norm before clipping)."""
        pixels, actions = self._inputs(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            terms = lewm_loss(self.model, pixels, actions, self.sigreg, float(self.cfg.sigreg.weight))
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
        random draw, so an exact resume stays exact); None without a held-out set."""
        if self.val_dataset is None:
            return None
        was_training = self.model.training
        self.model.eval()
        loader = DataLoader(self.val_dataset, batch_size=self.batch_size, shuffle=False,
                            num_workers=int(self.cfg.data.num_workers), generator=torch.Generator().manual_seed(0))
        total, count = torch.zeros((), device=self.device), 0
        for batch in loader:
            pixels, actions = self._inputs(batch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                loss = prediction_loss(self.model, pixels, actions)
            total += loss.float() * len(pixels)
            count += len(pixels)
        self.model.train(was_training)
        return float(total) / count

    def _record(self, terms: LossTerms, grad_norm: torch.Tensor, lr: float) -> None:
        """Queue this step's values; they are copied to the host every ``log_every`` steps (one sync, not one per step)."""
        self._pending.append((self.global_step, self.epoch + 1, lr, torch.stack([*terms, grad_norm])))

    def _flush(self) -> Optional[Dict[str, float]]:
        if not self._pending:
            return None
        values = torch.stack([p[3] for p in self._pending]).cpu().tolist()
        for (step, epoch, lr, _), (loss, pred, sig, gnorm) in zip(self._pending, values):
            self.history.append(
                {"step": step, "epoch": epoch, "loss": loss, "pred_loss": pred, "sigreg_loss": sig, "lr": lr, "grad_norm": gnorm}
            )
        self._pending.clear()
        last = self.history[-1]
        if not math.isfinite(last["loss"]):
            raise FloatingPointError(
                f"the loss became {last['loss']} at step {last['step']}; lower optim.lr or check the data "
                f"(last finite checkpoint: {ckpt.latest_checkpoint(self.run_dir)})"
            )
        return last

    # ------------------------------------------------------------------ loop
    def prepare(self) -> None:
        """Make the run directory ready: resume from its last checkpoint (``resume=true``) or refuse to overwrite one;
        write ``train_config.yaml``. ``fit`` calls it when it has not run (errors here are the user's: ValueError)."""
        if self._prepared:
            return
        self._prepare_run_dir()
        self._prepared = True

    def _prepare_run_dir(self) -> None:
        ckpt.remove_partial_checkpoints(self.run_dir)
        latest = ckpt.latest_checkpoint(self.run_dir)
        if self.cfg.resume:
            if latest is not None:
                self.restore(latest)
                tqdm.write(f"resumed from {latest} (step {self.global_step}, epoch {self.epoch + 1})")
            else:
                tqdm.write(f"resume=true but {self.run_dir} has no checkpoint yet: starting from scratch")
        elif latest is not None:
            raise ValueError(
                f"{self.run_dir} already holds checkpoints (latest {latest.name}); pass resume=true to continue that run "
                "or choose a new out=<dir>"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "train_config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))

    def fit(self) -> Dict[str, Any]:
        """Train to ``epochs`` (from the last checkpoint when resuming); write checkpoints, train_log.json and
        loss_curves.png into the run directory. -> the summary written to train_log.json."""
        self.prepare()
        cfg = self.cfg
        epochs = int(cfg.epochs)
        log_every, save_every = int(cfg.log_every), int(cfg.save_every_steps)
        self.model.train()
        pin = self.device.type == "cuda"
        while self.epoch < epochs:
            batches = epoch_batches(len(self.dataset), self.batch_size, int(cfg.seed), self.epoch)[self.batch_in_epoch :]
            loader = DataLoader(
                self.dataset, batch_sampler=batches, num_workers=int(cfg.data.num_workers), pin_memory=pin,
                generator=torch.Generator().manual_seed(int(cfg.seed) + self.epoch),
            )
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{epochs}",
                       dynamic_ncols=True, leave=True)
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
            tqdm.write(
                f"epoch {self.epoch}/{epochs}: loss {means['loss']:.4f} (pred {means['pred_loss']:.4f}, "
                f"sigreg {means['sigreg_loss']:.3f})" + (f", held-out pred {val:.4f}" if val is not None else "")
                + f" -> {path}"
            )
        return self.finish()

    def finish(self) -> Dict[str, Any]:
        """Write train_log.json and loss_curves.png; -> the summary."""
        self._flush()
        latest = ckpt.latest_checkpoint(self.run_dir)
        summary = {
            "run_dir": str(self.run_dir),
            "checkpoint": str(latest) if latest else None,
            "device": str(self.device),
            "precision": "bf16-autocast" if self.amp_dtype is not None else "fp32",
            "sigreg": {"fused": bool(self.cfg.sigreg.fused), "backend": self.sigreg_backend},
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "dataset_sequences": len(self.dataset),
            "val_sequences": len(self.val_dataset) if self.val_dataset is not None else 0,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            "epochs_done": self.epoch,
            "train_time_s": self.train_time_s,
            "steps_per_s": self.global_step / self.train_time_s if self.train_time_s > 0 else None,
            "epochs": epoch_means(self.history, self.val_history),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "history": self.history,
        }
        write_log(self.run_dir / "train_log.json", summary)
        if self.history:
            plot_losses(self.run_dir / "loss_curves.png", self.history, float(self.cfg.sigreg.weight), self.val_history)
        return summary


def train(cfg: DictConfig, dataset: Optional[Dataset] = None) -> Dict[str, Any]:
    """Build a ``Trainer`` and run it; -> summary (also in ``<out>/train_log.json``)."""
    return Trainer(cfg, dataset).fit()

