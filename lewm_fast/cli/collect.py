"""``lewm-collect``: collect episodes of a LeWM environment into an HDF5 episode file (hydra ``key=value`` args)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAME = "collect"
REQUIRED = ("env", "episodes", "out")
USAGE = """usage: lewm-collect env=<name> episodes=<N> out=<path.h5> [key=value ...]

Roll out expert / random policies in one of the LeWM environments (two_room, pusht, reacher, cube) and write the
episodes (uint8 pixels, actions, proprio, simulator states, episode boundaries, normalisation statistics) to a chunked,
compressed HDF5 file; format=swm writes stable-worldmodel's layout instead (its HDF5Dataset reads it). Each finished
episode is committed before the next starts: an interrupted run leaves a readable file, and rerunning the same command
with append=true completes it. New keys need hydra's "+" prefix, e.g.
+env_kwargs.fast_render=true (cube: no shadows or reflections, much faster on CPU).

examples:
  lewm-collect env=two_room episodes=20 out=data/two_room.h5
  lewm-collect env=pusht episodes=1000 out=data/pusht.h5 image_size=96 policy=expert
  lewm-collect env=pusht episodes=1000 out=data/pusht.h5 image_size=96 policy=expert append=true
  lewm-collect env=two_room episodes=20 out=data/two_room_swm.h5 format=swm

keys and defaults (lewm_fast/configs/collect.yaml):
"""


def _error(message: str) -> int:
    from ..config import one_line

    print(f"lewm-collect: error: {one_line(message)}", file=sys.stderr)
    return 2


def load_config(overrides: Sequence[str]):
    """Compose ``configs/collect.yaml`` with hydra ``key=value`` overrides; new keys only under ``env_kwargs``."""
    from ..config import compose_config

    return compose_config(CONFIG_NAME, overrides, open_keys=("env_kwargs",))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(USAGE + (CONFIG_DIR / f"{CONFIG_NAME}.yaml").read_text())
        return 0
    options = [arg for arg in argv if arg.startswith("-")]
    if options:
        return _error(f"unrecognised option {options[0]!r}; arguments are key=value overrides (see --help)")

    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = load_config(argv)
    except (ValueError, HydraException, OmegaConfBaseException) as exc:
        return _error(f"bad arguments: {exc}")
    missing = [key for key in REQUIRED if OmegaConf.is_missing(cfg, key)]
    if missing:
        return _error(f"missing required argument(s): {' '.join(f'{key}=...' for key in missing)} (see --help)")
    if not OmegaConf.is_dict(cfg.env_kwargs):
        return _error(f"bad arguments: env_kwargs must be a mapping of constructor arguments (e.g. "
                      f"+env_kwargs.fast_render=true), got {cfg.env_kwargs!r}")

    from ..data import EpisodeFileError, collect
    from ..data.layout import count_episodes

    start = time.perf_counter()
    try:
        path = collect(
            cfg.env, cfg.episodes, cfg.out, episode_len=cfg.episode_len, image_size=cfg.image_size, seed=cfg.seed,
            overwrite=cfg.overwrite, progress=cfg.progress, append=cfg.append, policy=cfg.policy,
            expert_fraction=cfg.expert_fraction, compression=cfg.compression,
            env_kwargs=OmegaConf.to_container(cfg.env_kwargs), format=cfg.format,
        )
    except KeyboardInterrupt:
        print(f"lewm-collect: interrupted; {cfg.out} holds the finished episodes (rerun with append=true to continue)",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, EpisodeFileError) as exc:
        return _error(str(exc))
    episodes, frames = count_episodes(path)
    print(f"lewm-collect: {path} holds {episodes} {cfg.env} episodes ({frames} frames); "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
