"""``lewm-analyze``: look inside a trained LeWM. Subcommands ``probe``, ``surprise`` and ``latents`` (see
``lewm_fast.analysis``), each with hydra-style ``key=value`` overrides of ``lewm_fast/configs/analyze_<command>.yaml``,
``--cfg`` and ``--help``. Each writes ``<out>/<command>.json`` and ``<out>/<command>.png``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

PROG = "lewm-analyze"
DESCRIPTIONS = {
    "probe": "Linear (closed-form ridge) and MLP probes from the frozen encoder's latents to every physical quantity the\n"
             "env stores (two_room: agent x, y; pusht: agent and block x, y, block angle sin/cos; reacher: joint angles,\n"
             "fingertip; cube: cube and gripper position), trained and tested on disjoint episodes; test R^2, Pearson r\n"
             "and MSE for the trained model and a randomly initialised one of the same size.",
    "surprise": "Surprise ||predicted latent - encoded latent||^2 along real trajectories and along copies edited in the\n"
                "simulator at an event frame (teleport, colour change, pass-through through a wall or the block); AUROC\n"
                "of event frames against clean frames and the event / clean surprise ratio.",
    "latents": "A 2-D map of the latents of many episodes (UMAP when umap-learn is installed, else PCA), coloured by a\n"
               "ground-truth quantity and by time, with one episode drawn as a path.",
}
EXAMPLES = {
    "probe": ("lewm-analyze probe checkpoint=runs/quickstart data=data/two_room.h5",
              "lewm-analyze probe checkpoint=runs/pusht data=data/pusht.h5 quantities=[block_x,block_y] every=5"),
    "surprise": ("lewm-analyze surprise checkpoint=runs/quickstart data=data/two_room.h5",
                 "lewm-analyze surprise checkpoint=runs/pusht data=data/pusht.h5 kinds=[teleport] episodes=20"),
    "latents": ("lewm-analyze latents checkpoint=runs/quickstart data=data/two_room.h5 quantity=agent_y",
                "lewm-analyze latents checkpoint=runs/pusht data=data/pusht.h5 method=pca highlight=3"),
}
SUMMARIES = {
    "probe": "linear and MLP probes of the frozen latents onto the env's physical quantities (vs a random model)",
    "surprise": "surprise on real and simulator-perturbed trajectories: detection AUROC and event ratio",
    "latents": "2-D map (UMAP or PCA) of many episodes' latents, coloured by a quantity and by time",
}
USAGE = f"""usage: {PROG} <command> [--cfg] [--help] [key=value ...]

commands:
""" + "\n".join(f"  {name:<10} {text}" for name, text in SUMMARIES.items()) + f"""

{PROG} <command> --help lists the command's keys and their defaults."""


def command_help(command: str) -> str:
    """Usage, description, every key with its default and comment (the packaged YAML), examples."""
    from importlib import resources

    from ..config import CONFIG_MODULE

    keys = resources.files(CONFIG_MODULE).joinpath(f"analyze_{command}.yaml").read_text()
    return "\n".join([f"usage: {PROG} {command} [--cfg] [--help] [key=value ...]", "", DESCRIPTIONS[command], "",
                      f"keys and defaults (lewm_fast/configs/analyze_{command}.yaml):", keys, "examples:",
                      *(f"  {e}" for e in EXAMPLES[command])])


def _common(cfg) -> dict[str, Any]:
    """Checked keys every command shares -> keyword arguments of the analysis functions."""
    from ..backends import resolve_device
    from ..config import DEVICES, require_choice, require_int, require_key

    for key in ("checkpoint", "data"):
        value = require_key(cfg, key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a path, got {value!r}")
    if require_key(cfg, "env") is not None and not isinstance(cfg.env, str):
        raise ValueError(f"env must be an environment name or null, got {cfg.env!r}")
    require_int(cfg, "episodes")
    require_int(cfg, "seed", 0)
    device = require_choice(cfg, "device", DEVICES)
    return {"env": cfg.env, "episodes": int(cfg.episodes), "seed": int(cfg.seed), "device": str(resolve_device(device))}


def _names(cfg, key: str) -> list[str] | None:
    from omegaconf import OmegaConf

    value = OmegaConf.to_container(cfg[key]) if OmegaConf.is_list(cfg[key]) else cfg[key]
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"{key} must be a list of names such as [a,b] or null, got {value!r}")
    return value


Outcome = tuple[dict[str, Any], list[str]]


def run_probe(cfg) -> Outcome:
    from ..analysis import probe
    from ..analysis.probes import summary_rows
    from ..config import require_bool, require_int, require_key, require_number

    kwargs = _common(cfg)
    if require_key(cfg, "ridge") is not None:
        require_number(cfg, "ridge", 0.0, open_low=True)
    require_number(cfg, "test_fraction", 0.0, 1.0, open_low=True)
    result = probe(cfg.checkpoint, cfg.data, quantities=_names(cfg, "quantities"), every=require_int(cfg, "every"),
                   test_fraction=float(cfg.test_fraction), ridge=cfg.ridge, mlp_hidden=require_int(cfg, "mlp_hidden"),
                   mlp_epochs=require_int(cfg, "mlp_epochs"), baseline=require_bool(cfg, "baseline"), **kwargs)
    lines = [f"{result['env']}: probes on {result['frames']} frames of {len(result['episodes'])} episodes, test R^2:"]
    return result, lines + ["  " + "".join(f"{c:>16}" for c in row) for row in summary_rows(result)]


def run_surprise(cfg) -> Outcome:
    from ..analysis import surprise
    from ..config import require_int

    kwargs = _common(cfg)
    result = surprise(cfg.checkpoint, cfg.data, kinds=_names(cfg, "kinds") or [], after=require_int(cfg, "after"),
                      **kwargs)
    used, short = len(result["episodes"]), len(result["short_episodes"])
    lines = [f"{result['env']}: surprise on {used} episodes (frameskip {result['frameskip']})"]
    if short:
        lines[0] += (f"; left out {short} of the {used + short} episodes read (fewer than {result['min_frames']} "
                     f"frames): {', '.join(map(str, result['short_episodes']))}")
    lines += [f"  {k:<13} AUROC {d['auroc']:.3f}  event / clean surprise x{d['ratio']:.1f}  ({d['events']} events)"
              for k, d in [*result["kinds"].items(), ("all kinds", result["overall"])]]
    return result, lines + [f"  {k:<13} skipped: {why}" for k, why in result["skipped"].items()]


def run_latents(cfg) -> Outcome:
    from ..analysis import latent_map
    from ..analysis.latent_map import METHODS
    from ..config import require_choice, require_int, require_key

    kwargs = _common(cfg)
    if require_key(cfg, "quantity") is not None and not isinstance(cfg.quantity, str):
        raise ValueError(f"quantity must be a quantity name or null, got {cfg.quantity!r}")
    result = latent_map(cfg.checkpoint, cfg.data, quantity=cfg.quantity, every=require_int(cfg, "every"),
                        method=require_choice(cfg, "method", METHODS), highlight=require_int(cfg, "highlight", 0),
                        **kwargs)
    return result, [f"{result['env']}: latent map of {len(result['coords'])} frames, {result['note']}, coloured by "
                    f"{result['quantity']} and time; episode {result['highlight']} as a path"]


COMMANDS: dict[str, Callable[[Any], Outcome]] = {"probe": run_probe, "surprise": run_surprise, "latents": run_latents}
DROP = {"probe": ("test",), "surprise": (), "latents": ()}  # result keys left out of the JSON


def write_outputs(command: str, cfg, result: dict[str, Any]) -> Path:
    """``<out>/<command>.json`` and ``<out>/<command>.png``; -> the output dir."""
    from .. import analysis
    from ..analysis.report import write_json

    out = Path(cfg.out or Path("runs") / f"analyze-{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    write_json(out / f"{command}.json", {"command": command, "checkpoint": cfg.checkpoint, **result}, DROP[command])
    plot = {"probe": analysis.plot_probe, "surprise": analysis.plot_surprise, "latents": analysis.plot_latent_map}
    plot[command](result, out / f"{command}.png")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import compose_config, one_line, parse_cli
    from ..data import EpisodeFileError
    from ..io import CheckpointError

    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (see --help)")
        overrides, wants_help, wants_cfg = parse_cli(rest, {})
        if wants_help:
            print(command_help(command))
            return 0
        cfg = compose_config(f"analyze_{command}", overrides)
        if wants_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        result, lines = COMMANDS[command](cfg)
    except (ValueError, TypeError, ImportError, CheckpointError, EpisodeFileError, HydraException,
            OmegaConfBaseException) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    out = write_outputs(command, cfg, result)
    print("\n".join([*lines, f"results: {out}/{command}.json, {out}/{command}.png"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
