"""The fixed inputs of ``bench/gpu_model.py`` (an ESTIMATE): the GPUs' published numbers and the model's assumptions.

Every number is here and nowhere else. Device numbers come from the vendors' documents named beside them; the
efficiencies, floors and host costs are assumptions, calibrated where a source says so (the 2026-12-07 paper estimate,
``/work/shared/notes/gpu-estimate-2026-12-07.md`` §2 and §5.4, measured the host costs on a 2-vCPU AMD EPYC VM). The
first GPU run (``bench/device_run.sh``) prints the estimate beside the measurement so that they can be recalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

# 1.1: rules for the fused rollout kernels (adaln_linear panels, attention_residual, column-first grids)
# 1.2: adaln_linear's row panel charged at its operands' element sizes (a bf16 plan's modulations are bf16; 1.1
#      charged x, shift and mul at 4 bytes each whatever their dtype)
MODEL_VERSION = "gpu_model 1.2 (2026-12-07)"


@dataclass(frozen=True)
class Device:
    """One GPU: what the roofline and occupancy model needs."""

    key: str
    name: str
    arch: int  # compute capability x 10
    sms: int
    clock_hz: float  # boost clock
    fp32_fma_per_clk_per_sm: int  # FP32 lanes (one FMA each per clock)
    bf16_tc_flops: float  # dense BF16 tensor-core peak, FLOP/s (fp32 accumulate)
    tf32_tc_flops: float  # dense TF32 tensor-core peak, FLOP/s
    hbm_bytes_per_s: float  # DRAM bandwidth
    l2_bytes: int
    regs_per_sm: int  # 32-bit registers
    smem_per_sm: int  # shared memory per SM, bytes (what CTAs on one SM share)
    max_warps_per_sm: int
    max_ctas_per_sm: int
    l2_bytes_per_clk_per_sm: float  # L2 -> SM feed (assumption unless a source is given)
    has_wgmma: bool  # Hopper warpgroup MMA
    aot_arch: int  # which targets' rows of the AOT report give registers / shared memory / dot instructions
    launch_latency_s: float  # from cudaLaunchKernel returning to the kernel starting, idle GPU
    graph_node_s: float  # per kernel node of a replayed CUDA graph (dependent chain), on top of its run time
    graph_launch_s: float  # one cudaGraphLaunch

    @property
    def smem_per_block(self) -> int:
        """Shared memory one program may use (the opt-in maximum per block): the SM's less the 1 KiB the hardware
        reserves per block (227 KiB on H100, 163 on A100, 99 on L4 / RTX 4090)."""
        return self.smem_per_sm - 1024

    @property
    def fp32_flops(self) -> float:
        return 2.0 * self.fp32_fma_per_clk_per_sm * self.clock_hz * self.sms


# Launch / graph costs: the paper estimate's values (§2: GPU start 4 us after issue, 1.0 us per graph node, 20 us per
# replay), the same on every device (they are driver / front-end costs; no vendor document gives them).
_LAUNCH = dict(launch_latency_s=4e-6, graph_node_s=1.0e-6, graph_launch_s=20e-6)

DEVICES: Dict[str, Device] = {
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022) and H100 datasheet, SXM5: 132 SMs; FP32 67 TFLOPS
    # (= 132 x 128 FMA x 2 x 1.98 GHz); TF32 494.7 / BF16 989.4 TFLOPS dense (the datasheet's 989 / 1979 are with
    # sparsity); HBM3 3.35 TB/s; 50 MB L2; 228 KB shared memory and 64K registers per SM, 64 warps, 32 CTAs per SM.
    # L2 feed 64 B/clk/SM: the paper estimate's assumption.
    "h100": Device("h100", "NVIDIA H100 SXM5 80GB", 90, 132, 1.98e9, 128, 989.4e12, 494.7e12, 3.35e12, 50 * 2**20,
                   65536, 228 * 1024, 64, 32, 64.0, True, 90, **_LAUNCH),
    # NVIDIA H200 Tensor Core GPU datasheet, SXM: the H100 SXM5's SMs, clocks and peaks with HBM3e at 4.8 TB/s
    # (141 GB); L2 and per-SM limits as H100 (same GH100 die). Here because the lent GPU machines may be H200s.
    "h200": Device("h200", "NVIDIA H200 SXM 141GB", 90, 132, 1.98e9, 128, 989.4e12, 494.7e12, 4.8e12, 50 * 2**20,
                   65536, 228 * 1024, 64, 32, 64.0, True, 90, **_LAUNCH),
    # NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020) and A100 80GB datasheet, SXM4: 108 SMs at 1.41 GHz;
    # FP32 19.5 TFLOPS (64 FMA lanes per SM); TF32 156 / BF16 312 TFLOPS dense; HBM2e 2,039 GB/s; 40 MB L2; 164 KB
    # shared memory and 64K registers per SM, 64 warps, 32 CTAs per SM; L2 read bandwidth 5,120 B/clk (/108 SMs = 47).
    "a100": Device("a100", "NVIDIA A100 SXM4 80GB", 80, 108, 1.41e9, 64, 312e12, 156e12, 2.039e12, 40 * 2**20,
                   65536, 164 * 1024, 64, 32, 47.0, False, 80, **_LAUNCH),
    # NVIDIA L4 Tensor Core GPU datasheet and NVIDIA Ada GPU Architecture whitepaper: 58 SMs (7,424 CUDA cores) at
    # 2.04 GHz boost; FP32 30.3 TFLOPS; TF32 60 / BF16 121 TFLOPS dense (120 / 242 with sparsity); GDDR6 300 GB/s;
    # 48 MB L2; compute capability 8.9: 100 KB shared memory, 64K registers, 48 warps, 24 CTAs per SM (CUDA C++
    # Programming Guide, compute capabilities table). L2 feed 32 B/clk/SM: assumption (no vendor number).
    # No sm_89 rows in the AOT report: the sm_80 rows stand in (same mma.sync instruction set, no wgmma).
    "l4": Device("l4", "NVIDIA L4", 89, 58, 2.04e9, 128, 121e12, 60e12, 300e9, 48 * 2**20,
                 65536, 100 * 1024, 48, 24, 32.0, False, 80, **_LAUNCH),
    # NVIDIA Ada GPU Architecture whitepaper, appendix table for GeForce RTX 4090: 128 SMs at 2.52 GHz boost; FP32
    # 82.6 TFLOPS; TF32 82.6 / BF16 (fp32 accumulate) 165.2 TFLOPS dense; GDDR6X 1,008 GB/s; 72 MB L2; compute
    # capability 8.9 limits as for L4. L2 feed 32 B/clk/SM: assumption. AOT rows: sm_80 (as for L4).
    "4090": Device("4090", "NVIDIA GeForce RTX 4090", 89, 128, 2.52e9, 128, 165.2e12, 82.6e12, 1.008e12, 72 * 2**20,
                   65536, 100 * 1024, 48, 24, 32.0, False, 80, **_LAUNCH),
}


def device_for_name(name: str) -> Optional[str]:
    """The table key of a GPU name as nvidia-ml-py / torch report it (None when it is not in the table)."""
    n = name.lower()
    if "pcie" in n:  # PCIe boards have fewer SMs, lower clocks and bandwidth than the SXM parts in the table
        return None
    for needle, key in (("h100", "h100"), ("h200", "h200"), ("a100", "a100"), ("l4", "l4"), ("4090", "4090")):
        if needle == "l4" and not any(tok == "l4" for tok in n.replace("-", " ").split()):
            continue
        if needle in n:
            return key
    return None


@dataclass(frozen=True)
class Assumptions:
    """The model's assumptions. ``nominal`` is the paper estimate's (§2); ``fast`` / ``slow`` its sensitivity bounds
    (§5.4, ``sensitivity.py``)."""

    bw_eff: float = 0.85  # achievable fraction of DRAM bandwidth
    t_min: float = 1.5e-6  # floor of a small kernel: launch ramp + a few dependent memory round trips
    t_min_gemm: float = 3.0e-6  # cuBLAS floor
    fma_eff: Tuple[float, float, float] = (0.50, 0.60, 0.65)  # FP32 FMA-dot efficiency at 1 / 2 / >=3 resident CTAs
    tc_eff: Tuple[float, float] = (0.45, 0.55)  # tensor-core dot efficiency at 1 / >=2 resident CTAs
    mma_sync_on_hopper: float = 0.6  # mma.sync on an sm_90 GPU, relative to wgmma
    cublas_eff: Tuple[float, float] = (0.70, 0.55)  # of peak: fp32 SGEMM (TF32 off, PyTorch's default) / bf16
    cublas_tile: int = 128  # cuBLAS output tile (square) for SM fill and split-K
    sdpa_bw_factor: float = 1.5  # fused attention on tiny sequences: ~2/3 of DRAM bandwidth
    graph_node_scale: float = 1.0  # x Device.graph_node_s
    host_aten_s: float = 6e-6  # one aten op issued from Python, incl. cudaLaunchKernel
    host_triton_s: float = 25e-6  # lewm_fast kernel wrapper checks (18-33 us measured on the VM) + Triton dispatch
    host_views_per_iter_s: float = 0.4e-3  # lewm_fast's eager slicing / views per CEM iteration (~300 view ops)
    host_eager_module_s: float = 8e-6  # per kernel of an nn.Module-driven eager loop (stable-worldmodel, the
    # reference planner), Python module calls and no-kernel ops included (calibrated: 11.4 ms per stand-in
    # iteration on the VM over its kernels, for a server CPU ~1.5-2x faster)
    sync_s: float = 15e-6  # a device-to-host copy + host sync, after the GPU drained
    eager_gap_s: float = 0.5e-6  # between back-to-back kernels of an eager stream whose host runs ahead
    refit_s: Tuple[float, float] = (6e-6, 2.5e-6)  # elite refit (30 serial top-k reductions) / sampling only
    plan_host_s: float = 0.15e-3  # lewm_fast plan(): input checks (~5 syncs), input copies, divergence sync, clone
    default_regs: int = 128  # registers / thread for a Triton launch missing from the AOT report
    default_smem: int = 32 * 1024  # shared memory / CTA for a Triton launch missing from the AOT report


NOMINAL = Assumptions()
SENSITIVITY: Dict[str, Assumptions] = {
    "nominal": NOMINAL,
    "fast": replace(NOMINAL, t_min=1.2e-6, t_min_gemm=2.5e-6, graph_node_scale=0.7, host_aten_s=4e-6,
                    host_triton_s=15e-6, host_views_per_iter_s=0.25e-3, fma_eff=(0.65, 0.72, 0.78),
                    cublas_eff=(0.80, 0.65), host_eager_module_s=6e-6),
    "slow": replace(NOMINAL, t_min=2.0e-6, t_min_gemm=4e-6, graph_node_scale=2.0, host_aten_s=8e-6,
                    host_triton_s=35e-6, host_views_per_iter_s=0.6e-3, fma_eff=(0.35, 0.42, 0.45),
                    cublas_eff=(0.45, 0.35), host_eager_module_s=11e-6),
}
