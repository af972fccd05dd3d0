"""``evaluate(cfg)``: load a checkpoint (lewm-train's, a stable-worldmodel folder or object checkpoint), build the
env, the goal source (an episode file, or the env's scripted expert) and a ``CEMPlanner``, run the MPC episodes, write
``results.json`` and pictures of the first episodes into the output directory. ``viewer=true`` pages come from a
``ViewerFactory`` the caller passes in (``lewm-eval``: the analysis planning viewer)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ..backends import resolve_device
from ..config import DEVICES, require_bool, require_choice, require_int, require_key
from ..data import ActionCodec
from ..io import CheckpointError, load_model
from .media import save_gif, save_strip
from .planners import PlannerInputs, build_planner, validate_planner_config
from .mpc import DatasetGoals, EpisodeResult, ExpertGoals, run_episode, summarize

DATASET_EPISODES = ("held_out", "all")
GOAL_SOURCES = ("dataset", "expert")


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the key for any bad evaluation setting (planner sizes are checked by the planner)."""
    checkpoint = require_key(cfg, "checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint:
        raise ValueError(f"checkpoint must be a checkpoint folder, a training run directory or an _object.ckpt file, "
                         f"got {checkpoint!r}")
    require_int(cfg, "episodes")
    require_int(cfg, "goal_offset")
    require_int(cfg, "budget")
    require_int(cfg, "seed", 0)
    require_int(cfg, "save_episodes", 0)
    require_choice(cfg, "device", DEVICES)
    require_bool(cfg, "allow_env_mismatch")
    require_choice(cfg, "dataset_episodes", DATASET_EPISODES)
    require_choice(cfg, "goals", GOAL_SOURCES)
    if not isinstance(require_key(cfg, "env_kwargs"), DictConfig):
        raise ValueError(f"env_kwargs must be a mapping of environment constructor arguments, got {cfg.env_kwargs!r}")
    require_int(cfg, "history_len")
    require_int(cfg, "workers")
    require_bool(cfg, "viewer")
    if require_key(cfg, "viewer_probe") is not None and not Path(cfg.viewer_probe).is_file():
        raise ValueError(f"viewer_probe {cfg.viewer_probe} does not exist (the probe.json lewm-analyze probe writes)")
    if require_key(cfg, "dataset") is not None and not isinstance(cfg.dataset, str):
        raise ValueError(f"dataset must be the path of an episode file or null (expert goals), got {cfg.dataset!r}")
    if require_key(cfg, "env") is not None and not isinstance(cfg.env, str):
        raise ValueError(f"env must be an environment name or null (the checkpoint's), got {cfg.env!r}")
    if require_key(cfg, "image_size") is not None:
        require_int(cfg, "image_size", 8)
    validate_planner_config(cfg)


def _dataset_action_stats(dataset: Path, columns: Dict[str, Any]) -> Tuple[List[float], List[float]]:
    """Per env action dimension mean and std of ``dataset``'s actions (stable-worldmodel checkpoints carry none)."""
    from ..data import read_layout
    from ..data.h5format import open_h5
    from ..data.layout import read_layout_stats

    with open_h5(dataset) as f:
        stats = read_layout_stats(f, read_layout(f, columns=columns))
    return stats.action_mean.tolist(), stats.action_std.tolist()


def check_env_sizes(env, env_name: str, norm: Dict[str, Any], folder: os.PathLike) -> None:
    """CheckpointError when the env's action / proprioception sizes differ from those the checkpoint was trained with
    (``normalization.json``; checkpoints from before lewm_fast stored them are not checked)."""
    found = {"action_dim": int(env.action_space.shape[0]),
             "proprio_dim": int(env.observation_space["proprio"].shape[0])}
    for key, value in found.items():
        if key in norm and int(norm[key]) != value:
            raise CheckpointError(
                f"{folder} was trained with {key}={norm[key]}, but env {env_name!r} has {value}; "
                "pass allow_env_mismatch=true to evaluate anyway"
            )


def held_out_episodes(dataset: Path, norm: Optional[Dict[str, Any]], which: str) -> Optional[List[int]]:
    """Episode indices of ``dataset`` to draw goals from (None: all). ``which="held_out"``: the episodes the checkpoint's
    run held out when ``dataset`` is its training file (``normalization.json`` records both), else all of them."""
    trained = (norm or {}).get("data", {})
    if which == "all" or not trained.get("path"):
        return None
    same = Path(trained["path"]).is_file() and os.path.samefile(trained["path"], dataset)
    if not same:
        return None
    episodes = list(trained.get("held_out_episodes", []))
    if not episodes:
        raise ValueError(f"{dataset} is the file this checkpoint was trained on, and its run held out no episode "
                         "(data.val_fraction=0): evaluate on another file, or pass dataset_episodes=all")
    return episodes


def goal_dataset(cfg: DictConfig, norm: Optional[Dict[str, Any]], source: Path) -> Optional[Path]:
    """The episode file of ``cfg.dataset``, else (dataset goals) the checkpoint's training file; None when neither
    is needed nor given."""
    if cfg.dataset is not None:
        dataset = Path(cfg.dataset)
        if not dataset.is_file():
            raise ValueError(f"dataset {dataset} does not exist")
        return dataset
    if cfg.goals != "dataset" or norm is None:
        return None
    trained = norm.get("data", {}).get("path")
    if trained is None:
        raise ValueError(f"{source} does not record its training file (saved by an older lewm-train): pass "
                         "dataset=<episode file> for dataset goals, or goals=expert")
    if not Path(trained).is_file():
        raise ValueError(f"{source} was trained on {trained}, which is gone: pass dataset=<episode file> (e.g. the moved "
                         "file) for dataset goals, or goals=expert")
    return Path(trained)


class EpisodeViewer(Protocol):
    """Stands in for the planner during one saved episode (``reset``, ``act``), sees its env steps through
    ``watch(env)``, then writes the episode's page."""

    def watch(self, env: Any) -> Any: ...

    def reset(self) -> None: ...

    def act(self, obs: torch.Tensor, goal: torch.Tensor, action_history: torch.Tensor) -> torch.Tensor: ...

    def write(self, path: Path, goal_state: Any) -> Any: ...


ViewerFactory = Callable[[Any, str, Optional[str]], EpisodeViewer]
"""``(planner, env name, cfg.viewer_probe) -> EpisodeViewer`` for ``viewer=true``; a module-level function, since
``workers=N`` hands it to spawned processes."""

_WORKER: Optional["Evaluation"] = None


def _start_worker(cfg: DictConfig, threads: int, out: Path, viewer: Optional[ViewerFactory]) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Evaluation(cfg, out, viewer)


def _play_in_worker(episode: int) -> EpisodeResult:
    assert _WORKER is not None
    return _WORKER.play(episode)


@contextlib.contextmanager
def episode_results(evaluation: "Evaluation", episodes: int, workers: int) -> Iterator[Iterator[EpisodeResult]]:
    """The episodes' results as they finish: played here (``workers=1``) or in ``workers`` spawned processes, each
    with its own copy of the evaluation and an equal share of the CPU threads."""
    if workers == 1:
        yield (evaluation.play(e) for e in range(episodes))
        return
    threads = max(1, torch.get_num_threads() // workers)
    ctx = multiprocessing.get_context("spawn")
    initargs = (evaluation.cfg, threads, evaluation.out, evaluation.viewer)
    with ctx.Pool(workers, initializer=_start_worker, initargs=initargs) as pool:
        yield pool.imap_unordered(_play_in_worker, range(episodes))


class Evaluation:
    """``Evaluation(cfg).run() -> summary``: the constructor checks the config and loads checkpoint, env, goal source
    and planner (raising ValueError/CheckpointError with a clear message); ``run`` plays the episodes. ``viewer``
    makes the ``viewer=true`` pages (required with it)."""

    def __init__(self, cfg: DictConfig, out_dir: Optional[os.PathLike] = None, viewer: Optional[ViewerFactory] = None):
        validate_eval_config(cfg)
        if cfg.viewer and viewer is None:
            raise ValueError("viewer=true needs a viewer factory: run lewm-eval, or pass "
                             "viewer=lewm_fast.cli.evaluate.plan_viewer")
        self.viewer = viewer
        from .. import envs

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, run = load_model(cfg.checkpoint, self.device)
        self.folder, norm = run.source, run.normalization
        if norm is None and (cfg.dataset is None or cfg.env is None):
            raise CheckpointError(
                f"{self.folder} has no normalization.json (the action statistics needed to act in the environment; "
                "lewm-train writes it next to every checkpoint). For a stable-worldmodel checkpoint, pass env=<name> "
                "and dataset=<its training or held-out HDF5 file>: the statistics then come from the dataset"
            )
        trained_on = str(norm["env"]) if norm is not None else cfg.env
        self.env_name = cfg.env or trained_on
        if self.env_name != trained_on and not cfg.allow_env_mismatch:
            raise CheckpointError(
                f"{self.folder} was trained on {trained_on!r}, not {self.env_name!r}: its latents and action statistics "
                f"belong to {trained_on!r}. Drop env= to evaluate there, or pass allow_env_mismatch=true"
            )
        image_size = int(cfg.image_size or self.model.config["encoder"]["image_size"])
        try:
            self.env = envs.make(self.env_name, image_size=image_size, seed=int(cfg.seed),
                                 **OmegaConf.to_container(cfg.env_kwargs))
        except TypeError as exc:  # an env_kwargs key the env's constructor does not take
            raise ValueError(f"env_kwargs: {exc}") from None
        action_dim = int(self.env.action_space.shape[0])
        if norm is not None and not cfg.allow_env_mismatch:
            check_env_sizes(self.env, self.env_name, norm, self.folder)
        self.frameskip = int(norm["frameskip"]) if norm is not None else self.model.action_dim // action_dim
        if action_dim * self.frameskip != self.model.action_dim:
            raise ValueError(
                f"env {self.env_name!r} has {action_dim}-d actions, x frameskip {self.frameskip} = "
                f"{action_dim * self.frameskip}, but the model takes {self.model.action_dim}-wide action blocks: "
                "it was trained on another environment"
            )
        columns = OmegaConf.to_container(cfg.columns)
        dataset = goal_dataset(cfg, norm, self.folder)
        if norm is not None:
            mean, std = norm["action"]["mean"], norm["action"]["std"]
        else:
            mean, std = _dataset_action_stats(dataset, columns)
        self.codec = ActionCodec(mean, std, self.frameskip, action_dim)
        if cfg.goals == "dataset":
            episodes = held_out_episodes(dataset, norm, str(cfg.dataset_episodes))
            self.goals: Any = DatasetGoals(self.env, dataset, int(cfg.goal_offset), episodes, columns)
        else:
            self.goals = ExpertGoals(self.env, envs.make_policy(self.env_name, self.env, kind="expert", seed=int(cfg.seed)),
                                     int(cfg.goal_offset))
        if not 1 <= int(cfg.history_len) <= self.model.history_size:
            raise ValueError(f"history_len must be in [1, {self.model.history_size}] (the model's window), got {cfg.history_len}")
        box = self.env.action_space
        self.planner = build_planner(self.model, cfg, PlannerInputs(
            Path(self.folder), self.codec, np.asarray(box.low, dtype=np.float64), np.asarray(box.high, dtype=np.float64)))
        self.out = Path(out_dir or cfg.out or Path("runs") / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}")

    def play(self, episode: int) -> EpisodeResult:
        """Episode ``episode``: env reset, goal draw and planner noise all seeded by ``seed + episode`` (so episodes
        give the same result in any order or process). With ``viewer=true`` the first ``save_episodes`` episodes also
        write ``episode_<e>.html`` (made by the ``viewer`` factory)."""
        cfg = self.cfg
        seed = int(cfg.seed) + episode
        self.planner.reseed(seed)
        record = episode < int(cfg.save_episodes)
        kwargs = dict(episode=episode, seed=seed, budget=int(cfg.budget), history_len=int(cfg.history_len), record=record)
        if not (record and cfg.viewer):
            return run_episode(self.env, self.goals, self.planner, self.model, self.codec, **kwargs)
        recorder = self.viewer(self.planner, self.env_name, cfg.viewer_probe)
        drawn: Dict[str, Any] = {}

        def goals(seed: int) -> Tuple[Any, Any]:
            drawn["start"], drawn["goal"] = self.goals(seed)
            return drawn["start"], drawn["goal"]

        result = run_episode(recorder.watch(self.env), goals, recorder, self.model, self.codec, **kwargs)
        if result.plan_latencies_s:  # an episode that starts at its goal plans nothing to show
            recorder.write(self.out / f"episode_{episode:03d}.html", drawn["goal"])
        return result

    def run(self) -> Dict[str, Any]:
        """Play ``cfg.episodes`` MPC episodes (in ``cfg.workers`` processes); -> the summary written to
        ``<out>/results.json``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        results: List[EpisodeResult] = []
        with episode_results(self, int(cfg.episodes), int(cfg.workers)) as played:
            bar = tqdm(played, total=int(cfg.episodes), desc=f"eval {self.env_name}", dynamic_ncols=True)
            for r in bar:
                results.append(r)
                if r.frames:
                    name = self.out / f"episode_{r.episode:03d}"
                    save_strip(name.with_suffix(".png"), r.frames, r.goal_frame, every=self.frameskip, success=r.success)
                    save_gif(name.with_suffix(".gif"), r.frames, r.goal_frame, success=r.success)
                done = sum(x.success for x in results)
                last = f"{1e3 * r.plan_latencies_s[-1]:.0f}" if r.plan_latencies_s else "-"
                bar.set_postfix(success=f"{done}/{len(results)} = {100 * done / len(results):.0f} %", plan_ms=last)
        results.sort(key=lambda r: r.episode)
        summary = {
            "env": self.env_name,
            "checkpoint": str(self.folder),
            "device": str(self.device),
            "planner": {**OmegaConf.to_container(cfg.planner, resolve=True), "class": type(self.planner).__name__,
                        "backend_requested": cfg.planner.backend, "backend": self.planner.which},
            "goals": str(cfg.goals),
            "dataset": str(self.goals.path) if isinstance(self.goals, DatasetGoals) else None,
            "history_len": int(cfg.history_len),
            "workers": int(cfg.workers),
            "goal_offset": int(cfg.goal_offset),
            "budget": int(cfg.budget),
            "seed": int(cfg.seed),
            **summarize(results),
            "per_episode": [r.summary() for r in results],
        }
        (self.out / "results.json").write_text(json.dumps(summary, indent=2))
        summary["out"] = str(self.out)
        return summary


def evaluate(cfg: DictConfig, out_dir: Optional[os.PathLike] = None,
             viewer: Optional[ViewerFactory] = None) -> Dict[str, Any]:
    """``Evaluation(cfg, out_dir, viewer).run()``."""
    return Evaluation(cfg, out_dir, viewer).run()
