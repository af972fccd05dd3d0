"""``lewm-data``: episode-file utilities; ``lewm-data convert`` converts between lewm_fast's and stable-worldmodel's
HDF5 layouts (``key=value`` args)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

PROG = "lewm-data"
REQUIRED = ("in", "out", "to")
DEFAULTS: dict[str, str | bool | None] = {
    "in": None, "out": None, "to": None, "overwrite": False, "env": None, "compression": "gzip", "progress": True,
}
USAGE = """usage: lewm-data convert in=<file.h5> out=<file.h5> to=swm|lewm [key=value ...]

Convert an episode file between lewm_fast's layout (written by lewm-collect) and stable-worldmodel's HDF5 layout
(per-step columns pixels, action, proprio, state, ... indexed by ep_len / ep_offset, as stable_worldmodel's
HDF5Dataset reads; e.g. the LeWM datasets pusht_expert_train.h5, tworoom.h5). One episode is in memory at a time;
pixels, actions, proprio, states and episode boundaries are copied bit-exactly. lewm-train and SequenceDataset read
both layouts directly: converting is needed only to hand data to the other library.

keys:
  in=<path>              input file, either layout (Blosc, Zstd, LZ4 compressed: pip install hdf5plugin)
  out=<path>             output file (written to <out>.partial, renamed when complete)
  to=swm|lewm            output layout
  overwrite=false        replace an existing out file
  env=<name>             environment of an input that records none (stable-worldmodel files); needed for to=lewm
  compression=gzip       output pixel compression: gzip (level 4) | lzf
  progress=true          show a progress bar
  columns.<role>=<name>  stable-worldmodel input: the column holding pixels, action, proprio or state

examples:
  lewm-data convert in=pusht_expert_train.h5 out=data/pusht.h5 to=lewm env=pusht
  lewm-data convert in=data/two_room.h5 out=data/two_room_swm.h5 to=swm
"""


class UsageError(ValueError):
    """A command-line mistake."""


def _error(message: str) -> int:
    from ..config import one_line

    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return 2


def _bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise UsageError(f"{key} must be true or false, got {value!r}")
    return value.lower() == "true"


def parse_args(args: Sequence[str]) -> tuple[dict[str, str | bool | None], dict[str, str | None]]:
    """``key=value`` arguments of ``lewm-data convert`` -> (settings, columns mapping); UsageError on a mistake."""
    settings, columns = dict(DEFAULTS), {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r} (see --help)")
        if key.startswith("columns."):  # the roles are checked by read_layout
            columns[key[len("columns."):]] = value or None
        elif key not in DEFAULTS:
            raise UsageError(f"unknown key {key!r}; keys are {', '.join(DEFAULTS)}, columns.<role> (see --help)")
        else:
            settings[key] = _bool(key, value) if isinstance(DEFAULTS[key], bool) else value or None
    missing = [key for key in REQUIRED if settings[key] is None]
    if missing:
        raise UsageError(f"missing required argument(s): {' '.join(f'{key}=...' for key in missing)} (see --help)")
    return settings, columns


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(USAGE, end="")
        return 0
    if not argv:
        return _error("missing command; usage: lewm-data convert in=<file.h5> out=<file.h5> to=swm|lewm (see --help)")
    command, *args = argv
    if command != "convert":
        return _error(f"unknown command {command!r}; the command is convert (see --help)")
    options = [arg for arg in args if arg.startswith("-")]
    if options:
        return _error(f"unrecognised option {options[0]!r}; arguments are key=value (see --help)")
    try:
        settings, columns = parse_args(args)
    except UsageError as exc:
        return _error(str(exc))

    from ..data import convert
    from ..data.layout import LAYOUT_NAMES, count_episodes

    start = time.perf_counter()
    try:
        out = convert(settings["in"], settings["out"], settings["to"], overwrite=settings["overwrite"],
                      env=settings["env"], compression=settings["compression"], progress=settings["progress"],
                      columns=columns)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {settings['out']} was not written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:  # EpisodeFileError is a ValueError, EpisodeReadError an OSError
        return _error(str(exc))
    episodes, frames = count_episodes(out)
    print(f"{PROG}: {out} holds {episodes} episodes ({frames} frames) in {LAYOUT_NAMES[settings['to']]} layout; "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
