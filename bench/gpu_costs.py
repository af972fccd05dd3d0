"""Per-launch cost rules of ``bench/gpu_model.py`` (an ESTIMATE): what one kernel launch takes on a GPU.

t = max(floor, compute, L2 -> SM feed, DRAM bytes). Triton GEMM-epilogue kernels (``gated_residual``, ``goal_cost``,
``adaln_linear``) from their tiling: programs, resident CTAs per SM (registers and shared memory from the AOT report,
warps), waves, per-SM FMA rate (IEEE fp32 dots: no tensor cores) or tensor-core rate (wgmma / mma.sync); cuBLAS
GEMMs from peak x efficiency x SM fill (128 x 128 tiles, split-K when short of SMs); the rest from bytes moved, with
a floor. Numbers and assumptions: ``bench/gpu_devices.py``. A Triton kernel without a rule here is costed by the
bytes of its tensor arguments and says so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

import gpu_devices as GD
import gpu_trace as GT

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- AOT report
def default_report_path() -> Path:
    """``bench/results/triton-aot-<installed triton>.json``, else the newest ``triton-aot-<version>.json`` there."""
    results = REPO / "bench" / "results"
    try:
        import triton

        path = results / f"triton-aot-{triton.__version__}.json"
        if path.exists():
            return path
    except ImportError:
        pass
    found = [p for p in results.glob("triton-aot-*.json") if re.fullmatch(r"triton-aot-[\d.]+\.json", p.name)]
    if not found:
        raise FileNotFoundError(f"no AOT report in {results}: run python -m lewm_fast.aot --out <report> first")
    return max(found, key=lambda p: tuple(int(x) for x in p.name[len("triton-aot-"):-len(".json")].split(".")))


class AotReport:
    """Registers / shared memory / dot instructions per compiled specialization, from ``python -m lewm_fast.aot``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        data = json.loads(self.path.read_text())
        self.triton = data.get("triton")
        self.arches = tuple(data.get("arches", ()))
        self.rows: Dict[Tuple, Dict[str, Any]] = {}
        for row in data["kernels"]:
            if row.get("error") is None:
                self.rows[self._key(row["kernel"], row["arch"], row)] = row
        self._memo: Dict[Tuple, Tuple[Optional[Dict[str, Any]], str]] = {}
        self.missing: Dict[str, Dict[str, Any]] = {}  # description -> {kernel, arch, constexprs, ...}

    @staticmethod
    def _key(kernel: str, arch: int, d: Dict[str, Any]) -> Tuple:
        return (kernel, arch, json.dumps(d["constexprs"], sort_keys=True), d["num_warps"], d["num_stages"],
                tuple(d["dtypes"]))

    def lookup(self, launch: Any, arch: int) -> Tuple[Optional[Dict[str, Any]], str]:
        """(the report row of ``launch`` compiled for ``arch``, or None; the specialization's description). Absent
        ones are collected in ``missing``. A launch that cannot be specialized (e.g. under TRITON_INTERPRET=1, whose
        ``@triton.jit`` functions are not compilable) counts as missing."""
        sig = tuple((str(a.dtype), tuple(a.shape), tuple(a.stride())) if isinstance(a, torch.Tensor) else repr(a)
                    for a in launch.args)
        memo_key = (launch.name, arch, sig, tuple(sorted((k, repr(v)) for k, v in launch.kwargs.items())))
        if memo_key in self._memo:
            return self._memo[memo_key]
        from lewm_fast.aot import specializations

        try:
            spec = specializations([("gpu_model", launch)], arch)[0]
            d = spec.describe()
        except Exception as exc:  # noqa: BLE001 - any failure to specialize: not comparable with the report
            desc = f"{launch.name} sm_{arch}: not specializable here ({type(exc).__name__})"
            self.missing[desc] = {"kernel": launch.name, "arch": arch}
            self._memo[memo_key] = (None, desc)
            return self._memo[memo_key]
        desc = f"{spec.kernel} sm_{arch} {json.dumps(d['constexprs'], sort_keys=True)} warps={d['num_warps']} " \
               f"stages={d['num_stages']} {','.join(d['dtypes'])}"
        row = self.rows.get(self._key(spec.kernel, arch, d))
        if row is None:
            self.missing[desc] = {"kernel": spec.kernel, "arch": arch, **d}
        self._memo[memo_key] = (row, desc)
        return self._memo[memo_key]


# ---------------------------------------------------------------------------------------------------- per launch
@dataclass
class Cost:
    """One launch's estimate: seconds, its dominant bound and what it was computed from."""

    t: float
    bound: str  # "latency", "SM fill", "FLOPs", "bytes", "L2 feed", "sync"
    flops: float = 0.0
    bytes: float = 0.0
    programs: Optional[int] = None
    sm_fill: Optional[float] = None
    ctas_per_sm: Optional[int] = None
    note: str = ""


def _elt(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _tensors(args: Iterable[Any]) -> List[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else t.nbytes


def _grid(launch: Any) -> Tuple[int, ...]:
    fn, kw = launch.variants()[0]
    g = launch.grid(kw) if callable(launch.grid) else launch.grid
    return tuple(int(x) for x in g)


def ctas_per_sm(dev: GD.Device, regs: int, warps: int, smem: int) -> int:
    """Resident CTAs per SM: registers (allocated per warp in units of 256), shared memory (+1 KiB reserved per CTA),
    warps and the CTA limit."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = dev.regs_per_sm // max(per_warp * warps, 1)
    by_smem = dev.smem_per_sm // (smem + 1024) if smem else dev.max_ctas_per_sm
    return max(1, min(by_regs, by_smem, dev.max_warps_per_sm // warps, dev.max_ctas_per_sm))


class CostModel:
    """The cost of each launch of a trace on ``dev`` under assumptions ``a``."""

    def __init__(self, dev: GD.Device, a: GD.Assumptions, report: AotReport):
        self.dev, self.a, self.report = dev, a, report

    # ------------------------------------------------------------------ helpers
    def hbm(self, nbytes: float) -> float:
        return nbytes / (self.dev.hbm_bytes_per_s * self.a.bw_eff)

    def bytes_bound(self, nbytes: float, flops: float = 0.0, floor: Optional[float] = None, **kw: Any) -> Cost:
        floor = self.a.t_min if floor is None else floor
        t_mem = self.hbm(nbytes)
        return Cost(max(floor, t_mem), "bytes" if t_mem > floor else "latency", flops, nbytes, **kw)

    def _aot(self, launch: Any) -> Tuple[int, int, Optional[str], str]:
        """(registers, shared memory, dot instruction or None, note) of a Triton launch on this device."""
        row, _ = self.report.lookup(launch, self.dev.aot_arch)
        if row is None:
            return self.a.default_regs, self.a.default_smem, "?", "not in AOT report: default regs/smem"
        note = "" if self.dev.aot_arch == self.dev.arch else f"AOT sm_{self.dev.aot_arch} rows"
        return int(row["registers"] or self.a.default_regs), int(row["shared_bytes"] or 0), row["dot_instructions"], note

    # ------------------------------------------------------------------ Triton tiled GEMMs
    def tile_gemm(self, launch: Any, R: int, N: int, K: int, dtype: torch.dtype, flops: float, extra_bytes: float,
                  a_reread: bool, a_passes: float = 1, n_tiles: int = 1,
                  side_groups: int = 0) -> Cost:
        """A Triton GEMM with a fused prologue / epilogue: R x N outputs over K, BLOCK_M x BLOCK_N (or BLOCK_D) tiles.
        ``a_reread``: the grid walks rows first, so A streams from DRAM once per column block when it does not stay
        in L2; ``a_passes``: A-tile loads per K slice (a prologue recomputing from several inputs); ``n_tiles``:
        output tiles each program computes one after the other (a loop over column slices); ``side_groups``: trailing
        groups of the grid's first axis whose programs do no GEMM (their bytes go in ``extra_bytes``)."""
        kw = launch.variants()[0][1]
        prec = kw.get("PRECISION")
        if prec is None and "IEEE" in kw:
            prec = "ieee" if kw["IEEE"] else "tf32"
        fp32_ieee = dtype == torch.float32 and prec in (None, "ieee")
        bm, bn, warps = kw["BLOCK_M"], kw.get("BLOCK_N", kw.get("BLOCK_D")), kw.get("num_warps", 4)
        bk = kw.get("BLOCK_K", kw.get("BLOCK_D"))  # attention_residual: K slices of one head (BLOCK_D)
        grid = _grid(launch)
        programs = math.prod(grid) // grid[0] * (grid[0] - side_groups)
        regs, smem, dot, note = self._aot(launch)
        if dot == "?":  # not in the report: FMA units for IEEE fp32, tensor cores otherwise
            dot = None if fp32_ieee else "mma.sync"
        dev, a = self.dev, self.a
        k = ctas_per_sm(dev, regs, warps, smem)
        k_eff = min(k, math.ceil(programs / dev.sms))
        waves = math.ceil(programs / (dev.sms * k))
        k_pad = math.ceil(K / bk) * bk
        tile_fma = bm * bn * k_pad * n_tiles
        if dot is None:
            rate = dev.fp32_fma_per_clk_per_sm * dev.clock_hz * a.fma_eff[min(k_eff, 3) - 1]
            unit = "FMA"
        else:
            peak = dev.tf32_tc_flops if dtype == torch.float32 else dev.bf16_tc_flops
            rate = peak / dev.sms / 2 * a.tc_eff[min(k_eff, 2) - 1]
            if dev.has_wgmma and dot != "wgmma":
                rate *= a.mma_sync_on_hopper
            if dtype == torch.float32 and prec == "tf32x3":
                rate /= 3
            unit = dot
        t_comp = waves * k_eff * tile_fma / rate
        elt = _elt(dtype)
        l2_feed = dev.l2_bytes_per_clk_per_sm * dev.clock_hz
        t_l2 = waves * k_eff * n_tiles * (bm * a_passes + bn) * k_pad * elt / l2_feed
        a_bytes = R * K * elt
        col_blocks = math.ceil(N / bn)
        hbm = a_bytes * (col_blocks if a_reread and a_bytes > dev.l2_bytes * 0.4 else 1) + N * K * elt + extra_bytes
        t_hbm = self.hbm(hbm)
        t = max(a.t_min, t_comp, t_l2, t_hbm)
        fill = min(1.0, programs / dev.sms)
        if t == t_comp:
            bound = "SM fill" if programs < dev.sms / 2 else "FLOPs"
        else:
            bound = {t_l2: "L2 feed", t_hbm: "bytes"}.get(t, "latency")
        note = "; ".join(x for x in (f"{unit}, {regs} regs, {smem // 1024} KiB smem", note) if x)
        return Cost(t, bound, flops, hbm, programs, fill, k, note)

    # ------------------------------------------------------------------ Triton launches
    def triton(self, launch: Any) -> Cost:
        name, args = launch.name, launch.args
        kw = launch.variants()[0][1]
        programs = math.prod(_grid(launch))
        if name == "_gated_residual_kernel":
            a2, w, _, gate, x = args[:5]
            R, K = a2.shape
            N = w.shape[0]
            # gated: gate read, x read and written; project_into (GATED False): its out written once
            extra = gate.numel() * gate.element_size() + 2 * _nbytes(x) if kw.get("GATED", True) else _nbytes(x)
            # the kernel with a PRECISION constexpr walks the columns fastest (its A panel is read once); before, rows
            rows_first = "PRECISION" not in kw
            return self.tile_gemm(launch, R, N, K, a2.dtype, 2.0 * R * N * K, extra, a_reread=rows_first)
        if name == "_goal_cost_kernel":
            h, w, _, goal, out = args[:5]
            M, K = h.shape
            D = w.shape[0]
            n_tiles = math.ceil(D / kw["BLOCK_D"])  # 1 when one BLOCK_D covers the latent; else a loop over slices
            return self.tile_gemm(launch, M, kw["BLOCK_D"], K, h.dtype, 2.0 * M * D * K, _nbytes(goal) + _nbytes(out),
                                  a_reread=False, n_tiles=n_tiles)
        if name == "_attention_residual_kernel":
            qkv, pre, w, _, gate, x = args[:6]
            R, N, K = int(args[6]), w.shape[0], w.shape[1]
            keys = kw["P"] + kw["S"]
            col_blocks = math.ceil(N / kw["BLOCK_N"])
            # attention recomputed by each column block: q.k and p.v over `keys` window tokens, every head
            att_flops = 4.0 * R * keys * K * col_blocks
            extra = _nbytes(qkv) + (_nbytes(pre) if kw["P"] > 0 else 0) + gate.numel() * gate.element_size() \
                + 2 * R * N * 4 - R * K * _elt(w.dtype)
            return self.tile_gemm(launch, R, N, K, w.dtype, 2.0 * R * N * K + att_flops, extra, a_reread=False,
                                  a_passes=1 + 2 * keys)
        if name == "_adaln_linear_kernel":
            x, shift, mul, w, _, out, pos, x_out = args[:8]
            R, N, D = int(args[8]), w.shape[0], w.shape[1]
            extra = _nbytes(shift) + _nbytes(mul) + _nbytes(out) - R * D * _elt(w.dtype)
            if kw.get("ADD_POS"):  # the position rows, and x + pos written once (by an extra column group)
                extra += _nbytes(pos) + _nbytes(x_out)
            n_tiles = kw.get("N_TILES", 1)
            # the row panel (x, and mul / shift when modulated, each at its own element size) is loaded once per
            # program for N_TILES tiles
            panel_bytes = x.element_size() + (shift.element_size() + mul.element_size() if kw.get("MODULATE", True) else 0)
            panel = panel_bytes / _elt(w.dtype) / n_tiles
            return self.tile_gemm(launch, R, N, D, w.dtype, 2.0 * R * N * D, _nbytes(x) + extra, a_reread=False,
                                  a_passes=panel, n_tiles=n_tiles, side_groups=int(bool(kw.get("ADD_POS"))))
        if name in ("_elite_refit_sample_kernel", "_cem_refit_sample_kernel"):
            t_fixed = self.a.refit_s[0] if kw.get("REFIT") else self.a.refit_s[1]
            nbytes = sum(_nbytes(t) for t in _tensors(args[:8]))
            c = self.bytes_bound(nbytes, floor=t_fixed, programs=programs)
            c.bound = "latency" if c.t == t_fixed else c.bound
            c.note = "serial top-k: fixed time (assumption)"
            return c
        if name == "_adaln_layernorm_kernel":
            x, shift, mul, out = args[0], args[1], args[2], args[5]
            nbytes = sum(_nbytes(t) for t in (x, shift, mul, out))
            return self.bytes_bound(nbytes, 12.0 * x.numel(), programs=programs)
        if name == "_window_attention_kernel":
            qkv, pre, out = args[:3]
            m, s, _ = qkv.shape
            nbytes = _nbytes(qkv) + (_nbytes(pre) if kw["P"] > 0 else 0) + _nbytes(out)
            flops = 4.0 * m * kw["NQ"] * (kw["P"] + s) * kw["INNER"]
            return self.bytes_bound(nbytes, flops, programs=programs)
        if name == "_philox_normal_kernel":
            return self.bytes_bound(_nbytes(args[0]), programs=programs)
        nbytes = sum(_nbytes(t) for t in _tensors(args))
        c = self.bytes_bound(nbytes, programs=programs)
        c.note = "no cost rule for this kernel: bytes of its tensor arguments only"
        return c

    # ------------------------------------------------------------------ aten ops
    def cublas(self, M: int, N: int, K: int, batch: int, dtype: torch.dtype, nbytes: float) -> Cost:
        dev, a = self.dev, self.a
        flops = 2.0 * batch * M * N * K
        if dtype == torch.float32:
            peak, eff = dev.fp32_flops, a.cublas_eff[0]
        else:
            peak, eff = dev.bf16_tc_flops, a.cublas_eff[1]
        tiles = batch * math.ceil(M / a.cublas_tile) * math.ceil(N / a.cublas_tile)
        ctas = tiles if tiles >= dev.sms else tiles * min(math.ceil(dev.sms / tiles), max(1, K // 256))
        waves = math.ceil(ctas / dev.sms)
        fill = ctas / (waves * dev.sms)
        t_comp = flops / (peak * eff * fill)
        t_mem = self.hbm(nbytes)
        t = max(a.t_min_gemm, t_comp, t_mem)
        bound = ("SM fill" if fill < 0.5 else "FLOPs") if t == t_comp else ("bytes" if t == t_mem else "latency")
        return Cost(t, bound, flops, nbytes, ctas, min(1.0, ctas / dev.sms), None, "cuBLAS")

    def aten(self, op: Any) -> Cost:
        name = op.name
        ins = [t for t in op.inputs]
        nbytes = sum(t.nbytes for t in op.inputs) + sum(t.nbytes for t in op.outputs)
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            mats = [t for t in ins if len(t.shape) >= 2]
            a_, b_ = mats[0], mats[1]
            if name in ("bmm", "baddbmm"):
                batch, M, K, N = a_.shape[0], a_.shape[1], a_.shape[2], b_.shape[2]
            else:
                batch, M, K, N = 1, a_.shape[0], a_.shape[1], b_.shape[1]
            return self.cublas(M, N, K, batch, a_.dtype, nbytes)
        if name == "scaled_dot_product_attention":
            q = ins[0]
            flops = 4.0 * q.numel * ins[1].shape[-2]
            c = self.bytes_bound(nbytes * self.a.sdpa_bw_factor, flops, floor=self.a.t_min_gemm)
            c.bytes = nbytes
            return c
        if name == "device_to_host":
            return Cost(self.a.sync_s, "sync", 0.0, nbytes)
        floor = 2 * self.a.t_min if name in ("convolution", "topk", "sort") else self.a.t_min
        return self.bytes_bound(nbytes, floor=floor)

    def event(self, e: GT.Event) -> Cost:
        return self.triton(e.launch) if e.kind == "triton" else self.aten(e.op)
