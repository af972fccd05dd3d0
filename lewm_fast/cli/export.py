"""``lewm-fast export-onnx`` and ``lewm-fast web`` (``key=value`` arguments; ``--key value`` works too)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Callable, Dict, Optional

PROG = "lewm-fast"

EXPORT_USAGE = """usage: lewm-fast export-onnx checkpoint=<run or checkpoint folder> out=<dir> [key=value ...]

Write encoder.onnx (uint8 frames -> latents), planner.onnx (context latents, action history, candidates, goal latent ->
per-block goal costs and the predicted latents) and manifest.json (sizes, normalisation, action scaling, opset, the
checkpoint's SHA-256, the env's constants, the latent PCA basis) into out.

keys:
  checkpoint=<path>   a lewm-train run directory or checkpoint folder (with normalization.json)
  out=<dir>           output folder (created)
  history=1           context latents the planner takes (1: stable-worldmodel's eval setting; up to the model's window)
  horizon=5           action blocks per candidate (the page can plan shorter horizons with the same file)
  data=<file.h5>      episode file for the latent PCA (default: the training file normalization.json records, else
                      the checkpoint's latent_pca.json)
  action_bounds=none  what planner.onnx does with the env's action box (recorded in the manifest in normalised units):
                      none | clip (clamp the candidates) | penalty (add bounds_weight * squared excess to the costs)
  bounds_weight=10    the penalty's weight
  idm=<folder>        a GC-IDM (lewm-train-idm) to export as idm.onnx (default: the run's idm/ when it has one;
                      the shipped model has one)
"""

WEB_USAGE = """usage: lewm-fast web [checkpoint=<run or checkpoint folder>] [port=8000] [out=<dir>] [key=value ...]

Serve the click-to-plan Two-Room page on localhost: the model is exported to ONNX (or the earlier export reused) and
planned with in the browser by onnxruntime-web. With out=<dir> (or --out <dir>), write the static folder there and exit
(any static file server can serve it; without cross-origin isolation headers the WASM backend runs one thread).

keys:
  checkpoint=<path>   default: the Two-Room model shipped with lewm_fast (lewm_fast/assets/two_room)
  port=8000           0: any free port
  host=127.0.0.1      interface to listen on
  out=<dir>           write the site here and exit instead of serving (default: serve from a cache folder)
  data=<file.h5>      episode file for the latent PCA (see lewm-fast export-onnx --help)
  idm=<folder>        a GC-IDM (lewm-train-idm) for the page's "policy" mode (default: the run's idm/ when it has
                      one; the shipped model has one)
"""


class UsageError(ValueError):
    """A command-line mistake."""


def parse_keys(args: Sequence[str], defaults: Dict[str, Optional[str]], required: Sequence[str] = ()) -> Dict[str, Optional[str]]:
    """``key=value`` / ``--key value`` / ``--key=value`` arguments -> settings (strings); UsageError on a mistake."""
    settings = dict(defaults)
    args = list(args)
    while args:
        arg = args.pop(0)
        key, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("--") and not sep:
            if not args:
                raise UsageError(f"{arg} needs a value")
            value, sep = args.pop(0), "="
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r} (see --help)")
        if key not in defaults:
            raise UsageError(f"unknown key {key!r}; keys are {', '.join(defaults)} (see --help)")
        settings[key] = value or None
    missing = [key for key in required if settings[key] is None]
    if missing:
        raise UsageError(f"missing required argument(s): {' '.join(f'{key}=...' for key in missing)} (see --help)")
    return settings


def parse_int(settings: Dict[str, Optional[str]], key: str, low: int) -> int:
    """``settings[key]`` as an int >= ``low``, or UsageError naming the key."""
    value = settings[key]
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"{key} must be an integer, got {value!r}") from None
    if number < low:
        raise UsageError(f"{key} must be >= {low}, got {number}")
    return number


def export_command(args: Sequence[str]) -> int:
    from ..export import export_onnx

    s = parse_keys(args, {"checkpoint": None, "out": None, "history": "1", "horizon": "5", "data": None,
                          "action_bounds": "none", "bounds_weight": "10", "idm": None}, required=("checkpoint", "out"))
    try:
        weight = float(str(s["bounds_weight"]))
    except ValueError:
        raise UsageError(f"bounds_weight must be a number, got {s['bounds_weight']!r}") from None
    manifest = export_onnx(s["checkpoint"], s["out"], history=parse_int(s, "history", 1),
                           horizon=parse_int(s, "horizon", 1), data=s["data"], action_bounds=str(s["action_bounds"]),
                           bounds_weight=weight, idm=s["idm"])
    sizes = ", ".join(f"{name} {info['bytes'] / 1e6:.1f} MB" for name, info in manifest["files"].items())
    print(f"{PROG} export-onnx: wrote {sizes} and manifest.json to {s['out']} (opset {manifest['opset']}, "
          f"latent PCA from {manifest['pca']['frames']} frames)")
    return 0


def web_command(args: Sequence[str]) -> int:
    from ..web.site import build_site, cache_folder, default_checkpoint, make_server

    s = parse_keys(args, {"checkpoint": None, "port": "8000", "host": "127.0.0.1", "out": None, "data": None,
                          "idm": None})
    port = parse_int(s, "port", 0)
    checkpoint = s["checkpoint"] or default_checkpoint()
    site = s["out"] or cache_folder(checkpoint)
    build_site(checkpoint, site, data=s["data"], idm=s["idm"])
    if s["out"]:
        print(f"{PROG} web: wrote the site to {site} (serve it with: lewm-fast web checkpoint={checkpoint}, or any "
              "static file server)")
        return 0
    try:
        server = make_server(site, port, str(s["host"]))
    except OSError as exc:
        raise UsageError(f"cannot listen on {s['host']}:{port}: {exc.strerror or exc}") from exc
    host, bound = server.server_address[:2]
    print(f"{PROG} web: serving {site} at http://{host}:{bound}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


COMMANDS: Dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "export-onnx": (export_command, EXPORT_USAGE),
    "web": (web_command, WEB_USAGE),
}


def main(command: str, args: Sequence[str]) -> int:
    """Run ``lewm-fast <command> <args>``; user mistakes print one ``lewm-fast: error: ...`` line and return 2."""
    from ..config import one_line
    from ..export import ExportError

    run, usage = COMMANDS[command]
    if any(arg in ("-h", "--help", "help") for arg in args):
        print(usage, end="")
        return 0
    try:
        return run(args)
    except (UsageError, ExportError) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
