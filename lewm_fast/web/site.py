"""The click-to-plan page: assemble its static folder (page, exported model, onnxruntime-web) and serve it locally.

A site folder holds ``index.html`` and the page's scripts (``lewm_fast/web/static``), ``encoder.onnx``,
``planner.onnx``, ``idm.onnx`` when the checkpoint has a GC-IDM, ``manifest.json`` (``lewm_fast.export``), and
``ort/``: the onnxruntime-web build files, copied
from ``lewm_fast/web/node_modules/onnxruntime-web/dist`` (``npm ci`` there installs the version pinned in
``package-lock.json``). The server sends the cross-origin isolation headers that let onnxruntime-web use threads.
"""

from __future__ import annotations

import functools
import os
import shutil
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..export.onnx import FORMAT, ExportError, checkpoint_hash, export_onnx, file_sha256, read_manifest
from ..io import CheckpointError, resolve_checkpoint

WEB = Path(__file__).resolve().parent
STATIC = WEB / "static"
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
# the WASM build (ort.wasm) and the WebGPU build (ort.webgpu, which loads the asyncify binary); nothing else is used
ORT_FILES = (
    "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm",
)
MIME = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
        ".onnx": "application/octet-stream"}


def ort_dist() -> Path:
    """The folder with onnxruntime-web's build files; ExportError saying how to install them when they are missing."""
    missing = [name for name in ORT_FILES if not (ORT_DIST / name).is_file()]
    if missing:
        raise ExportError(f"onnxruntime-web is not installed (no {missing[0]} in {ORT_DIST}): run "
                          f"`npm ci --ignore-scripts --prefix {WEB}` (needs node and npm; the version is pinned in "
                          "package-lock.json)")
    return ORT_DIST


def default_checkpoint() -> Path:
    """The trained Two-Room model shipped with the package; ExportError when the installation lacks it."""
    from ..assets import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "weights.pt").is_file():
        raise ExportError(f"the shipped model is missing from {DEFAULT_MODEL} (a source checkout without it?): pass "
                          "checkpoint=<run or checkpoint folder>, or train it with bench/train_default_model.sh")
    return DEFAULT_MODEL


def cache_folder(checkpoint: Union[str, os.PathLike]) -> Path:
    """Where ``lewm-fast web`` keeps the site of a checkpoint: ``$XDG_CACHE_HOME/lewm_fast/web/<hash>``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lewm_fast" / "web" / source_hash(checkpoint)[:16]


def source_hash(checkpoint: Union[str, os.PathLike]) -> str:
    """The SHA-256 the export records for ``checkpoint`` (a run, checkpoint folder or object file)."""
    try:
        return checkpoint_hash(resolve_checkpoint(checkpoint))
    except (CheckpointError, OSError) as exc:
        raise ExportError(f"cannot export {checkpoint}: {exc}") from exc


def default_idm_hash(checkpoint: Union[str, os.PathLike]) -> Optional[str]:
    """The SHA-256 of the GC-IDM the export of ``checkpoint`` picks by default (its run's ``idm/idm.pt``), or None."""
    from ..io.idm import default_idm_dir, idm_file

    path = idm_file(default_idm_dir(resolve_checkpoint(checkpoint)))
    return file_sha256([path]) if path.is_file() else None


def _copy_if_changed(src: Path, dst: Path) -> None:
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
        shutil.copy2(src, dst)


def build_site(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike],
               data: Optional[Union[str, os.PathLike]] = None,
               idm: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Write the page's static folder for ``checkpoint`` (with the GC-IDM ``idm``, default: the run's own, if any)
    into ``out``, exporting the model unless ``out`` already holds this checkpoint's export (one with action bounds:
    earlier exports lack them) and of its current default IDM (or none). -> the manifest. ExportError for what cannot
    be served."""
    dist = ort_dist()
    out = Path(out)
    manifest = read_manifest(out)
    reusable = (manifest is not None and manifest.get("format") == FORMAT and data is None and idm is None
                and "action_bounds" in manifest
                and manifest.get("source", {}).get("sha256") == source_hash(checkpoint)
                and (manifest.get("idm") or {}).get("source_sha256") == default_idm_hash(checkpoint)
                and all((out / name).is_file() for name in manifest.get("files", {})))
    if not reusable:
        manifest = export_onnx(checkpoint, out, data=data, idm=idm)
    if manifest["env"]["name"] != "two_room":
        raise ExportError(f"the web demo plays Two-Room, but {checkpoint} was trained on {manifest['env']['name']!r}")
    for src in STATIC.iterdir():
        _copy_if_changed(src, out / src.name)
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        _copy_if_changed(dist / name, out / "ort" / name)
    return manifest


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with JavaScript / WASM MIME types and cross-origin isolation (SharedArrayBuffer for threads);
    requests are not logged."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(site: Union[str, os.PathLike], port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for the folder ``site`` (``port=0``: any free port; ``server.server_address`` says which)."""
    return ThreadingHTTPServer((host, port), functools.partial(SiteHandler, directory=str(site)))
