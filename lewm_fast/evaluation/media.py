"""Episode pictures without ffmpeg: a PNG strip (frames every ``every`` env steps, then the goal) and a GIF of the
episode next to its goal, both with PIL."""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

MIN_SIDE = 128  # frames are upscaled (nearest) to at least this many pixels
LABEL_H = 14
GOAL_RGB = (30, 160, 60)
FAIL_RGB = (200, 40, 40)


def _upscale(frame: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    scale = max(1, -(-MIN_SIDE // max(img.size)))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _tile(frame: np.ndarray, label: str, border: tuple | None = None) -> Image.Image:
    img = _upscale(frame)
    pad = 3
    tile = Image.new("RGB", (img.width + 2 * pad, img.height + 2 * pad + LABEL_H), (255, 255, 255))
    if border is not None:
        ImageDraw.Draw(tile).rectangle([0, 0, img.width + 2 * pad - 1, img.height + 2 * pad - 1], fill=border)
    tile.paste(img, (pad, pad))
    ImageDraw.Draw(tile).text((pad, img.height + 2 * pad), label, fill=(0, 0, 0))
    return tile


def _row(tiles: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width
    return out


def save_strip(path: Union[str, os.PathLike], frames: Sequence[np.ndarray], goal_frame: np.ndarray, every: int,
               success: bool) -> None:
    """frames[0] is the start, frames[i] the frame after env step i: a row of every ``every``-th frame, the last frame,
    and the goal (framed green on success, red otherwise)."""
    if not frames:
        raise ValueError("save_strip needs at least one frame")
    idx = list(range(0, len(frames), every))
    if idx[-1] != len(frames) - 1:
        idx.append(len(frames) - 1)
    tiles = [_tile(frames[i], f"t={i}") for i in idx]
    tiles.append(_tile(goal_frame, "goal", GOAL_RGB if success else FAIL_RGB))
    _row(tiles).save(path)


def save_gif(path: Union[str, os.PathLike], frames: Sequence[np.ndarray], goal_frame: np.ndarray, success: bool,
             fps: int = 10) -> None:
    """Animated GIF: each env step's frame beside the goal frame (framed green on success, red otherwise)."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    goal = _tile(goal_frame, "goal", GOAL_RGB if success else FAIL_RGB)
    images = [_row([_tile(f, f"t={i}"), goal]) for i, f in enumerate(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, 1000 // fps), loop=0)
