"""Convert episode files between lewm_fast's layout and stable-worldmodel's, one episode at a time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
from tqdm import tqdm

from .h5format import COMPRESSIONS, open_h5
from .layout import LAYOUTS, WRITERS, EpisodeLayout, read_episode, read_layout

# lewm-collect's settings, kept as file attributes by both writers (``env`` and ``image_size`` are passed apart)
COLLECT_ATTRS = ("seed", "policy", "expert_fraction", "episode_len", "env_kwargs")


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    *,
    overwrite: bool = False,
    env: str | None = None,
    compression: str = "gzip",
    progress: bool = True,
    columns: Mapping[str, str | None] | None = None,
) -> Path:
    """Write every episode of ``src`` (either layout) to a new file ``dst`` in layout ``to`` ("lewm" or "swm") and
    return its path.

    Pixels, actions, proprio, state and episode boundaries are copied bit-exactly (state becomes float64, actions and
    proprio float32, pixels channels-last); a lewm file's statistics rows are computed from the episodes, its
    per-episode seeds and expert flags are kept (-1: unknown, from a stable-worldmodel file) and lewm-collect's
    settings carry over as attributes. One episode is in memory at a time. ``env`` names the environment when ``src``
    records none (a lewm file needs one). ``columns``: role -> column of ``src`` (see ``read_layout``). The file is
    written to ``<dst>.partial`` and renamed to ``dst`` once complete; an existing ``dst`` needs ``overwrite``.
    """
    src, dst = Path(src), Path(dst)
    if to not in LAYOUTS:
        raise ValueError(f"to must be one of {', '.join(LAYOUTS)}, got {to!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if not src.is_file():
        raise FileNotFoundError(f"input file {src} does not exist")
    if dst.is_dir():
        raise IsADirectoryError(f"out must be a file path, {dst} is a directory")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"in and out are the same file ({src}); write to another path")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=true to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    with open_h5(src) as f:
        layout = read_layout(f, columns=columns, env=env)
        if to == "lewm" and layout.env is None:
            raise ValueError(f"{src} records no environment and a lewm_fast file needs one; pass env=<name> (the "
                             "environment lewm-train's data.env and lewm-eval will use, e.g. env=pusht)")
        try:
            _copy_episodes(f, layout, partial, to, compression, progress)
            os.replace(partial, dst)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return dst


def _copy_episodes(f: h5py.File, layout: EpisodeLayout, out: Path, to: str, compression: str, progress: bool) -> None:
    writer = WRITERS[to].create(
        out, env=layout.env, image_size=layout.image_size, action_dim=layout.action_dim,
        proprio_dim=layout.proprio_dim, state_dim=layout.state_dim, compression=compression,
        attrs={key: f.attrs[key] for key in COLLECT_ATTRS if key in f.attrs},
    )
    with writer, tqdm(total=layout.num_episodes, unit="ep", desc=f"lewm-data convert to={to}",
                      disable=not progress) as bar:
        for index in range(layout.num_episodes):
            writer.write_episode(**read_episode(f, layout, index), **_episode_tags(f, layout, index))
            bar.update(1)


def _episode_tags(f: h5py.File, layout: EpisodeLayout, index: int) -> dict[str, int | bool | None]:
    """The reset seed and expert flag of a lewm file's episode (None when unknown)."""
    if layout.kind != "lewm":
        return {"seed": None, "expert": None}
    seed, expert = int(f["episode_seeds"][index]), int(f["episode_expert"][index])
    return {"seed": None if seed == -1 else seed, "expert": None if expert == -1 else bool(expert)}
