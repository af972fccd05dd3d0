"""Hydra-style configs shared by every command line: composition of the packaged configs (``lewm_fast/configs``) with
``key=value`` overrides, checked values with clear messages, the command-line split and the ``--help`` text."""

from __future__ import annotations

import numbers
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "lewm_fast.configs"
DEVICES = ("auto", "cpu", "cuda")


# ---------------------------------------------------------------------------------------------------- composition
def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def config_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Every key of ``cfg`` as a dotted path, mappings and their leaves alike (lists are leaves)."""
    keys: List[str] = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        value = cfg._get_node(key)
        if OmegaConf.is_dict(value):
            keys += config_keys(value, path + ".")
    return keys


def compose_config(config_name: str, overrides: Sequence[str] = (), open_keys: Sequence[str] = ()) -> DictConfig:
    """Compose ``lewm_fast/configs/<config_name>.yaml`` with hydra ``key=value`` overrides (hydra's compose API).

    Unknown keys are refused in every form (ValueError naming them): ``key=value`` for a key the config lacks, and
    ``+key=value`` / ``++key=value``, which hydra accepts by adding the key, and which nothing would read. Keys may be
    added only inside ``open_keys``, free-form mappings such as lewm-collect's ``env_kwargs``.
    """
    from hydra.errors import HydraException

    try:
        cfg = _compose(config_name, overrides)
    except HydraException as exc:
        unknown = re.match(r"Could not override '([^']+)'", str(exc))
        if unknown:
            raise ValueError(f"unknown key {unknown.group(1)!r} (--help lists every key)") from None
        raise ValueError(one_line(str(exc).split("Config search path")[0])) from None
    if any(o.startswith("+") for o in overrides):
        known = set(config_keys(_compose(config_name, [o for o in overrides if not o.startswith("+")])))
        added = [k for k in config_keys(cfg) if k not in known
                 and not any(k.startswith(f"{open_key}.") for open_key in open_keys)]
        added = [k for k in added if not any(k.startswith(f"{other}.") for other in added)]  # the outermost only
        if added:
            names = ", ".join(repr(k) for k in added)
            raise ValueError(f"unknown key{'s' if len(added) > 1 else ''} {names}: nothing would read "
                             f"{'them' if len(added) > 1 else 'it'} (--help lists every key)")
    return cfg


def one_line(message: str) -> str:
    """A (library) error message on one line, for ``<prog>: error: <message>``."""
    return " ".join(part.strip() for part in message.strip().splitlines() if part.strip())


def group_options(group: str) -> List[str]:
    """Option names of a config group, e.g. ``group_options("train/model") -> ["cpu_small", "paper"]``."""
    from importlib import resources

    folder = resources.files(CONFIG_MODULE).joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


# ---------------------------------------------------------------------------------------------------- checked values
class _Absent:
    pass


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` is present in ``cfg`` (whatever its value)."""
    return OmegaConf.select(cfg, key, default=_Absent) is not _Absent


def require_key(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``; ValueError if it is absent or left ``???``."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True, default=_Absent)
    except MissingMandatoryValue:
        raise ValueError(f"{key} is required: pass {key}=<value>") from None
    if value is _Absent:
        raise ValueError(f"config key {key!r} is missing")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_int(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    value = require_key(cfg, key)
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_number(cfg: DictConfig, key: str, low: float, high: Optional[float] = None, open_low: bool = False) -> float:
    value = require_key(cfg, key)
    bad = not is_number(value) or value != value or (value <= low if open_low else value < low)
    if high is not None and is_number(value):
        bad = bad or value > high
    if bad:
        bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{key} must be a number {bound}, got {value!r}")
    return float(value)


def require_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> str:
    value = require_key(cfg, key)
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def require_bool(cfg: DictConfig, key: str) -> bool:
    value = require_key(cfg, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------- command line
def parse_cli(argv: Sequence[str], flags: Dict[str, str]) -> tuple[List[str], bool, bool]:
    """Split a hydra-style command line. ``flags`` maps literal flags to the override they stand for
    (e.g. ``{"--fused-sigreg": "sigreg.fused=true"}``). -> (overrides, wants_help, wants_cfg)."""
    overrides: List[str] = []
    wants_help = wants_cfg = False
    for arg in argv:
        if arg in ("-h", "--help"):
            wants_help = True
        elif arg == "--cfg":
            wants_cfg = True
        elif arg in flags:
            overrides.append(flags[arg])
        elif arg.startswith("-"):
            known = ", ".join([*flags, "--cfg", "--help"])
            raise ValueError(f"unknown flag {arg!r} (flags: {known}); settings are given as key=value")
        elif "=" not in arg:
            raise ValueError(f"expected key=value, got {arg!r} (e.g. epochs=3, model=paper)")
        else:
            overrides.append(arg)
    return overrides, wants_help, wants_cfg


def format_help(prog: str, description: str, config_name: str, groups: Dict[str, str], flags: Dict[str, str],
                examples: Sequence[str]) -> str:
    """Usage, flags, config groups with their options (default marked *), every key with its default, examples.
    ``groups`` maps a group's name on the command line to its folder under lewm_fast/configs."""
    cfg = compose_config(config_name)
    choices = _default_choices(config_name)
    usage = ' '.join([prog, *(f'[{f}]' for f in flags), '[--cfg] [--help] [key=value ...]'])
    lines = [f"usage: {usage}", "", description, "",
             "flags:"]
    for flag, override in flags.items():
        lines.append(f"  {flag:<18} same as {override}")
    lines += [f"  {'--cfg':<18} print the composed config and exit", f"  {'-h, --help':<18} show this help and exit", ""]
    if groups:
        lines.append("config groups (group=option, * = default):")
        for name, folder in groups.items():
            opts = [f"{o}*" if o == choices.get(name) else o for o in group_options(folder)]
            lines.append(f"  {name:<10} {', '.join(opts)}")
        lines.append("")
    lines.append("settings (key=value; defaults shown):")
    lines += ["  " + line for line in OmegaConf.to_yaml(cfg).rstrip().splitlines()]
    lines += ["", "examples:"] + [f"  {e}" for e in examples]
    return "\n".join(lines)


def _default_choices(config_name: str) -> Dict[str, str]:
    """Group -> option chosen by the primary config's defaults list."""
    from importlib import resources

    text = resources.files(CONFIG_MODULE).joinpath(f"{config_name}.yaml").read_text()
    defaults = OmegaConf.create(text).get("defaults", [])
    out: Dict[str, str] = {}
    for entry in defaults:
        if OmegaConf.is_dict(entry):
            for k, v in entry.items():
                out[str(k)] = str(v)
    return out
