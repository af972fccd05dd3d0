"""Predictor rollout kernels against their plain-PyTorch references (``PredictorOps``), on small odd shapes:
the Triton kernels of ``kernels/`` (under TRITON_INTERPRET=1 on CPU, or on CUDA) and the C++ CPU ops of
``csrc/window_attention.cpp`` and ``csrc/window_blocks.cpp``. Tolerances: fp32 1e-5 relative-ish; bf16 one to two
bf16 ulps of the output scale; fp32 with TF32 dots 5e-3 (CUDA only: the interpreter multiplies exact fp32)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels then run on CPU tensors

import pytest
import torch
import torch.nn.functional as F

from lewm_fast.backends import csrc_available, triton_available
from lewm_fast.ops.predictor import CpuOps, PredictorOps, TritonOps

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not triton_available(DEVICE), reason="needs triton with CUDA or TRITON_INTERPRET=1")
needs_csrc = pytest.mark.skipif(not csrc_available(), reason="needs the C++ extension lewm_fast._C")
REF = PredictorOps()
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _randn(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)


def _attention_naive(qkv, heads, prefix=None, nq=None):
    """Loop-over-everything attention (independent of PredictorOps' SDPA formulation)."""
    m, s, width = qkv.shape
    inner = width // 3
    dh = inner // heads
    nq = s if nq is None else nq
    p = 0 if prefix is None else prefix.shape[1]
    out = torch.empty(m, nq, inner, dtype=torch.float64)
    for r in range(m):
        own = qkv[r].double()
        keys = own if prefix is None else torch.cat([prefix[r // (m // prefix.shape[0])].double(), own])
        for qi in range(nq):
            i = s - nq + qi
            q = own[i, :inner].view(heads, dh)
            k = keys[: p + i + 1, inner:2 * inner].view(-1, heads, dh)
            v = keys[: p + i + 1, 2 * inner:].view(-1, heads, dh)
            w = torch.softmax(torch.einsum("hd,jhd->hj", q, k) / dh ** 0.5, dim=-1)
            out[r, qi] = torch.einsum("hj,jhd->hd", w, v).reshape(-1)
    return out


# ---------------------------------------------------------------------------------------------------- adaln_linear
# float32 inputs with TF32 tensor-core dots (CUDA only; the interpreter multiplies exact fp32): 10-bit mantissas
TOL_TF32 = dict(rtol=5e-3, atol=5e-3)


def _tol(dtype, precision="ieee"):
    return TOL_TF32 if (dtype == torch.float32 and precision == "tf32") else TOL[dtype]


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32"),
                                              (torch.float32, "tf32x3"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("modulate", [True, False])
def test_adaln_linear_matches_torch(dtype, precision, activation, modulate):
    from lewm_fast.kernels.adaln_linear import adaln_linear

    g = torch.Generator().manual_seed(0)
    m, t, d, n = 7, 5, 37, 45
    x = _randn(m, t, d, gen=g, scale=3.0) + 1.0
    mods = _randn(m, t, 4, d, gen=g)  # strided views of a bigger buffer, as in the engine
    shift, mul = (mods[:, 1:4, 0], mods[:, 1:4, 2] + 1.0) if modulate else (None, None)
    xs = x[:, 1:4]
    w = _randn(n, d, gen=g, dtype=dtype, scale=d ** -0.5)
    b = _randn(n, gen=g, dtype=dtype)
    got = adaln_linear(xs, shift, mul, 1e-6, 1e-5, w, b, activation, precision)
    h = F.layer_norm(xs, (d,), eps=1e-6)
    if modulate:
        h = F.layer_norm(h * mul + shift, (d,), eps=1e-5)
    y = h.to(dtype).float() @ w.float().t() + b.float()
    want = y if activation == "none" else F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    assert got.dtype == dtype and got.shape == (m, 3, n) and got.is_contiguous()
    torch.testing.assert_close(got.float(), want, **_tol(dtype, precision))
    torch.testing.assert_close(got, REF.adaln_linear(xs, shift, mul, 1e-6, 1e-5, w, b, activation), **_tol(dtype, precision))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adaln_linear_writes_into_a_strided_out(dtype):
    """``out=``: the result lands in a slot of a bigger buffer (the rollout's per-block key / value cache), the rest
    of it untouched, equal to the contiguous result and to the reference op writing there."""
    from lewm_fast.kernels.adaln_linear import adaln_linear

    g = torch.Generator().manual_seed(3)
    m, s, d, n = 9, 2, 24, 40
    x = _randn(m, s, d, gen=g)
    shift, mul = _randn(m, s, d, gen=g), _randn(m, s, d, gen=g) + 1.0
    w = _randn(n, d, gen=g, dtype=dtype, scale=d ** -0.5)
    b = _randn(n, gen=g, dtype=dtype)
    cache = torch.full((m, 4, n), 7.0, device=DEVICE, dtype=dtype)
    got = adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "none", "ieee", out=cache[:, 1:3])
    assert got.data_ptr() == cache[:, 1:3].data_ptr()
    torch.testing.assert_close(cache[:, 1:3], adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b), rtol=0, atol=0)
    assert (cache[:, 0] == 7).all() and (cache[:, 3] == 7).all()
    ref = torch.full_like(cache, 7.0)
    REF.adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "none", out=ref[:, 1:3])
    torch.testing.assert_close(cache, ref, **TOL[dtype])
    with pytest.raises(ValueError, match="out must be"):
        adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, out=cache[:, 1:3].float() if dtype != torch.float32
                     else cache[:, 1:3].double())


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32"),
                                              (torch.bfloat16, "ieee")])
def test_adaln_linear_adds_the_window_positions(dtype, precision):
    """``pos`` / ``x_out`` (the rollout's first block): x + pos, a row per window position, is what gets normalised,
    and is written into x_out once (by the first of several column groups) - the result of adding first. x is a
    strided window of a latent buffer (``lat[:, first:end]``), left untouched."""
    from lewm_fast.kernels.adaln_linear import adaln_linear

    g = torch.Generator().manual_seed(5)
    m, d, n = 11, 37, 300  # 300 outputs: several column groups per row panel
    lat = _randn(m, 6, d, gen=g, scale=2.0)
    before = lat.clone()
    x, pos = lat[:, 2:5], _randn(4, d, gen=g)[1:]
    shift, mul = _randn(m, 3, d, gen=g), _randn(m, 3, d, gen=g) + 1.0
    w = _randn(n, d, gen=g, dtype=dtype, scale=d ** -0.5)
    b = _randn(n, gen=g, dtype=dtype)
    x_out = torch.full((m, 3, d), 7.0, device=DEVICE)
    got = adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu", precision, pos=pos, x_out=x_out)
    torch.testing.assert_close(x_out, x + pos, rtol=0, atol=0)
    torch.testing.assert_close(got, adaln_linear(x + pos, shift, mul, 1e-6, 1e-5, w, b, "gelu", precision),
                               rtol=0, atol=0)
    assert torch.equal(lat, before)
    ref_out = torch.empty_like(x_out)
    want = REF.adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu", pos=pos, x_out=ref_out)
    torch.testing.assert_close(ref_out, x_out, rtol=0, atol=0)
    torch.testing.assert_close(got, want, **_tol(dtype, precision))
    with pytest.raises(ValueError, match="pos and x_out"):
        adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, pos=pos)
    with pytest.raises(ValueError, match=r"pos must be a floating \(3, 37\)"):
        adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, pos=pos[:2], x_out=x_out)
    with pytest.raises(ValueError, match=r"x_out must be a contiguous floating \(11, 3, 37\)"):
        adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, pos=pos, x_out=x_out[:, :2])
    with pytest.raises(ValueError, match="x_out must be a contiguous"):
        adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, pos=pos, x_out=x_out.transpose(0, 1).contiguous().transpose(0, 1))


@needs_triton
def test_adaln_linear_bad_inputs():
    from lewm_fast.kernels.adaln_linear import adaln_linear

    x = torch.randn(3, 2, 8, device=DEVICE)
    w = torch.randn(5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="share a"):
        adaln_linear(x, x[:, :1], x, 1e-6, 1e-5, w, None)
    with pytest.raises(ValueError, match="together"):
        adaln_linear(x, x, None, 1e-6, 1e-5, w, None)
    with pytest.raises(ValueError, match="contiguous along its last"):
        adaln_linear(x, x, x.transpose(1, 2).contiguous().transpose(1, 2), 1e-6, 1e-5, w, None)
    with pytest.raises(ValueError, match=r"weight must be \(N, 8\)"):
        adaln_linear(x, x, x, 1e-6, 1e-5, w[:, :4], None)
    with pytest.raises(ValueError, match="activation must be"):
        adaln_linear(x, x, x, 1e-6, 1e-5, w, None, "relu")
    with pytest.raises(ValueError, match="precision must be"):
        adaln_linear(x, x, x, 1e-6, 1e-5, w, None, "none", "fp16")


# ------------------------------------------------------------------------------------------------ window_attention
CASES = [  # (M, S, B-prefix or None, P, num_queries, heads, dh)
    (7, 3, None, 0, 3, 4, 8),
    (7, 3, None, 0, 1, 4, 8),
    (6, 2, 2, 1, 2, 3, 5),
    (6, 1, 3, 2, 1, 16, 4),
    (5, 1, None, 0, 1, 2, 16),
    (7, 3, None, 0, 2, 3, 64),  # dh a multiple of 16: the C++ vectorised float path
    (6, 2, 2, 1, 2, 5, 16),
]


def _attention_inputs(m, s, b, p, heads, dh, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = _randn(m, s, 3 * heads * dh, gen=g, dtype=dtype)
    prefix = _randn(b, p, 3 * heads * dh, gen=g, dtype=dtype) if b else None
    return qkv, prefix


@needs_triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_attention_triton(case, dtype):
    from lewm_fast.kernels.window_attention import window_attention

    m, s, b, p, nq, heads, dh = case
    qkv, prefix = _attention_inputs(m, s, b, p, heads, dh, dtype)
    got = window_attention(qkv, heads, prefix_qkv=prefix, num_queries=nq)
    want = _attention_naive(qkv.cpu(), heads, None if prefix is None else prefix.cpu(), nq)
    assert got.shape == (m, nq, heads * dh) and got.dtype == dtype
    torch.testing.assert_close(got.double().cpu(), want, **TOL[dtype])
    torch.testing.assert_close(REF.window_attention(qkv, heads, prefix, nq).double().cpu(), want, **TOL[dtype])


@needs_csrc
@pytest.mark.parametrize("case", CASES)
def test_window_attention_cpp(case):
    m, s, b, p, nq, heads, dh = case
    qkv, prefix = _attention_inputs(m, s, b, p, heads, dh, torch.float32)
    got = CpuOps().window_attention(qkv.cpu(), heads, None if prefix is None else prefix.cpu(), nq)
    torch.testing.assert_close(got.double(), _attention_naive(qkv.cpu(), heads, None if prefix is None else prefix.cpu(), nq),
                               **TOL[torch.float32])


@needs_csrc
@pytest.mark.parametrize("dh", [8, 64])
def test_window_attention_cpp_wide_scores(dh):
    """Scores spread over hundreds (softmax weights down to exp(-400)): the C++ exp (float32, dh % 16 == 0: a
    polynomial clamped at exp(-87)) still matches float64 softmax attention."""
    qkv, prefix = _attention_inputs(9, 3, 3, 1, 4, dh, torch.float32, seed=3)
    qkv, prefix = qkv * 12.0, prefix * 12.0
    got = CpuOps().window_attention(qkv, 4, prefix, 3)
    want = _attention_naive(qkv.double(), 4, prefix.double(), 3)
    assert (want.abs().max() > 10) and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@needs_triton
def test_window_attention_bad_inputs():
    from lewm_fast.kernels.window_attention import window_attention

    qkv = torch.randn(4, 3, 3 * 2 * 8, device=DEVICE)
    with pytest.raises(ValueError, match="heads must be"):
        window_attention(qkv, 5)
    with pytest.raises(ValueError, match="num_queries"):
        window_attention(qkv, 2, num_queries=4)
    with pytest.raises(ValueError, match="B dividing M"):
        window_attention(qkv, 2, prefix_qkv=torch.randn(3, 1, 48, device=DEVICE))
    with pytest.raises(ValueError, match="dtype and device"):
        window_attention(qkv, 2, prefix_qkv=torch.randn(2, 1, 48, device=DEVICE, dtype=torch.float64))


@needs_csrc
def test_window_attention_cpp_bad_inputs():
    with pytest.raises(ValueError, match="num_queries"):
        torch.ops.lewm_fast.window_attention(torch.randn(4, 3, 48), None, 2, 0)
    with pytest.raises(ValueError, match="must divide"):
        torch.ops.lewm_fast.window_attention(torch.randn(4, 3, 48), torch.randn(3, 1, 48), 2, 1)


# ---------------------------------------------------------------------------------------------- attention_residual
@needs_triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, "ieee")])
def test_attention_residual_matches_torch(case, dtype, precision):
    """Attention + to_out + gated residual in one kernel, against the reference ops and the naive attention, on
    strided x / gate (the engine passes x[:, -NQ:] and a slice of the modulation buffer)."""
    from lewm_fast.kernels.attention_residual import attention_residual

    m, s, b, p, nq, heads, dh = case
    qkv, prefix = _attention_inputs(m, s, b, p, heads, dh, dtype)
    g = torch.Generator().manual_seed(3)
    n = 24
    w = _randn(n, heads * dh, gen=g, dtype=dtype, scale=(heads * dh) ** -0.5)
    bias = _randn(n, gen=g)
    x_full = _randn(m, s, n, gen=g)
    gate = _randn(m, s, 6, n, gen=g)[:, s - nq:, 2]
    x = x_full[:, s - nq:]
    att = _attention_naive(qkv, heads, prefix, nq).to(DEVICE)
    want = x.double() + gate.double() * (att.to(dtype).double() @ w.double().t() + bias.double())
    ref = x.clone()
    REF.attention_residual(ref, qkv, heads, w, bias, gate, prefix)
    out = attention_residual(x, qkv, heads, w, bias, gate, prefix, precision)
    assert out.data_ptr() == x_full[:, s - nq:].data_ptr()
    tol = _tol(dtype, precision)
    torch.testing.assert_close(x_full[:, s - nq:].double(), want, rtol=tol["rtol"], atol=tol["atol"] * 2)
    torch.testing.assert_close(x_full[:, s - nq:], ref, rtol=tol["rtol"], atol=tol["atol"] * 2)
    assert torch.equal(x_full[:, :s - nq], x_full[:, :s - nq])  # untouched rows stay as they were


@needs_triton
def test_attention_residual_bad_inputs():
    from lewm_fast.kernels.attention_residual import attention_residual

    qkv = torch.zeros(4, 3, 48, device=DEVICE)
    x = torch.zeros(4, 3, 8, device=DEVICE)
    w = torch.zeros(8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="heads must be"):
        attention_residual(x, qkv, 5, w, None, x)
    with pytest.raises(ValueError, match="x and gate must be"):
        attention_residual(torch.zeros(4, 4, 8, device=DEVICE), qkv, 2, w, None, torch.zeros(4, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match="weight must be"):
        attention_residual(x, qkv, 2, w[:, :8], None, x)
    with pytest.raises(ValueError, match="with B dividing M"):
        attention_residual(x, qkv, 2, w, None, x, torch.zeros(3, 1, 48, device=DEVICE))


# ------------------------------------------------------------------------------------- wide tiles (tensor cores)
@pytest.fixture
def few_sms(monkeypatch):
    """Kernels planned for a GPU of 2 SMs: small shapes then take the wide row tiles that tensor-core dots use at one
    environment's 300-900 rows on an H100 (``tiles``: at least half the SMs busy). Plans cached for other SM counts
    are dropped before and after."""
    from lewm_fast.kernels import adaln_linear, attention_residual, gated_residual

    mods = (adaln_linear, attention_residual, gated_residual)
    for mod in mods:
        monkeypatch.setattr(mod, "multiprocessor_count", lambda device: 2)
        mod._PLANS.clear()
    yield
    for mod in mods:
        mod._PLANS.clear()


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "tf32"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("modulate", [True, False])
def test_adaln_linear_wide_panels_match_torch(dtype, precision, modulate, few_sms):
    """64-row panels (8 warps), several row panels and a partial last column group, against the reference op."""
    from lewm_fast.kernels.adaln_linear import adaln_linear, tiles

    m, s, d, n = 50, 3, 37, 300
    assert tiles(m * s, n, d, dtype, "tf32", 2)[0] == 64
    g = torch.Generator().manual_seed(5)
    x = _randn(m, s + 1, d, gen=g, scale=3.0)[:, 1:] + 1.0
    mods = _randn(m, s, 4, d, gen=g)
    shift, mul = (mods[:, :, 0], mods[:, :, 2] + 1.0) if modulate else (None, None)
    w = _randn(n, d, gen=g, dtype=dtype, scale=d ** -0.5)
    b = _randn(n, gen=g, dtype=dtype)
    got = adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu", precision)
    want = REF.adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu")
    torch.testing.assert_close(got, want, **_tol(dtype, precision))


def test_adaln_linear_wide_panels_need_an_a100_class_shared_memory():
    """64-row panels take up to 136 KiB of shared memory: GPUs offering 99-101 KiB per program (sm_86 / sm_89 /
    sm_120) keep 16-row panels; exact float32 and 3xTF32 dots keep them everywhere."""
    pytest.importorskip("triton")
    from lewm_fast.kernels.adaln_linear import tiles

    assert tiles(900, 3072, 192, torch.bfloat16, "tf32", 132, None)[::4] == (64, 8)
    assert tiles(900, 3072, 192, torch.bfloat16, "tf32", 108, 166912)[::4] == (64, 8)  # A100
    assert tiles(900, 3072, 192, torch.bfloat16, "tf32", 128, 101376)[::4] == (16, 4)  # RTX 4090
    assert tiles(900, 3072, 192, torch.float32, "tf32", 58, 101376)[0] == 16  # L4
    for dot in ("ieee", "tf32x3"):
        assert tiles(900, 3072, 192, torch.float32, dot, 132, None)[0] == 16


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "tf32"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("p", [0, 2])
def test_attention_residual_wide_tiles_match_torch(dtype, precision, p, few_sms):
    """32 x 64 tiles over several row tiles and a partial last column tile, with and without a prefix."""
    from lewm_fast.kernels.attention_residual import attention_residual, tiles

    m, s, heads, dh, n = 70, 3 if p == 0 else 1, 2, 16, 80
    assert tiles(m * s, n, dtype, True, 2)[:2] == (32, 64)
    qkv, prefix = _attention_inputs(m, s, 5 if p else None, p, heads, dh, dtype, seed=4)
    g = torch.Generator().manual_seed(6)
    w = _randn(n, heads * dh, gen=g, dtype=dtype, scale=(heads * dh) ** -0.5)
    bias = _randn(n, gen=g)
    x = _randn(m, s, n, gen=g)
    gate = _randn(m, s, 3, n, gen=g)[:, :, 1]
    want = x.clone()
    REF.attention_residual(want, qkv, heads, w, bias, gate, prefix)
    attention_residual(x, qkv, heads, w, bias, gate, prefix, precision)
    tol = _tol(dtype, precision)
    torch.testing.assert_close(x, want, rtol=tol["rtol"], atol=tol["atol"] * 2)


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "tf32"), (torch.bfloat16, "ieee")])
def test_gated_residual_wide_tiles_match_torch(dtype, precision, few_sms):
    """64 x 32 tiles over several row tiles, a partial last row tile and strided x / gate."""
    from lewm_fast.kernels.gated_residual import gated_residual, tiles

    m, s, n, k = 45, 3, 40, 70
    assert tiles(m * s, n, k, dtype, True, 2)[0] == 64
    g = torch.Generator().manual_seed(7)
    x_full = _randn(m, s + 1, n, gen=g)
    gate = _randn(m, s, 6, n, gen=g)[:, :, 2]
    a = _randn(m, s, k, gen=g, dtype=dtype)
    w = _randn(n, k, gen=g, dtype=dtype, scale=k ** -0.5)
    bias = _randn(n, gen=g)
    x = x_full[:, 1:]
    want = x.clone()
    REF.gated_residual(want, a, w, bias, gate)
    gated_residual(x, a, w, bias, gate, precision)
    torch.testing.assert_close(x_full[:, 1:], want, **_tol(dtype, precision))


# -------------------------------------------------------------------------------------------------- gated_residual
@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("shape", [(7, 3, 37, 29), (5, 1, 16, 70), (3, 2, 20, 16), (700, 2, 24, 40)])
def test_gated_residual_matches_torch(dtype, precision, shape):
    from lewm_fast.kernels.gated_residual import gated_residual

    m, s, n, k = shape
    g = torch.Generator().manual_seed(1)
    x_full = _randn(m, s + 1, n, gen=g)
    gate = _randn(m, s + 2, 6, n, gen=g)[:, 1:s + 1, 2]  # strided slice of a modulation buffer
    a = _randn(m, s, k, gen=g, dtype=dtype)
    w = _randn(n, k, gen=g, dtype=dtype, scale=k ** -0.5)
    bias = _randn(n, gen=g)
    x = x_full[:, 1:]  # strided view, updated in place
    want = x.clone() + gate * (a.float() @ w.float().t() + bias)
    out = gated_residual(x, a, w, bias, gate, precision)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x_full[:, 1:], want, **_tol(dtype, precision))
    if dtype == torch.float32 and precision == "ieee":
        x_ref = x.clone() - gate * (a @ w.t() + bias)  # undo, then the torch op must reproduce it
        REF.gated_residual(x_ref, a, w, bias, gate)
        torch.testing.assert_close(x_ref, x, **TOL[dtype])
    x0, y = x.clone(), _randn(m, s, n, gen=g)
    gated_residual(x, y, None, None, gate)  # an Identity projection: x += gate * y
    torch.testing.assert_close(x, x0 + gate * y, **TOL[torch.float32])


@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("shape", [(7, 1, 37, 29), (300, 1, 24, 70), (5, 2, 16, 16)])
def test_project_into_matches_torch(dtype, precision, shape):
    """``project_into``: ``a @ w^T + b`` (fp32 accumulation) stored in a float32 slot of a latent buffer (strided on
    the row axes), neighbours untouched; the reference op writes the same."""
    from lewm_fast.kernels.gated_residual import project_into

    m, s, n, k = shape
    g = torch.Generator().manual_seed(2)
    lat = torch.full((m, s + 3, n), 5.0, device=DEVICE)
    a = _randn(m, s, k, gen=g, dtype=dtype)
    w = _randn(n, k, gen=g, dtype=dtype, scale=k ** -0.5)
    bias = _randn(n, gen=g)
    out = project_into(lat[:, 2:2 + s], a, w, bias, precision)
    assert out.data_ptr() == lat[:, 2:2 + s].data_ptr()
    want = a.float() @ w.float().t() + bias
    torch.testing.assert_close(lat[:, 2:2 + s], want, **_tol(dtype, precision))
    assert (lat[:, :2] == 5).all() and (lat[:, 2 + s:] == 5).all()
    ref = torch.full_like(lat, 5.0)
    REF.project_into(ref[:, 2:2 + s], a, w, bias)
    torch.testing.assert_close(ref, lat, **TOL[dtype])
    for act in ("gelu", "gelu_tanh"):
        project_into(lat[:, 2:2 + s], a, w, bias, precision, act)
        gelu = F.gelu(want, approximate="tanh" if act == "gelu_tanh" else "none")
        torch.testing.assert_close(lat[:, 2:2 + s], gelu, **_tol(dtype, precision))
    with pytest.raises(ValueError, match="needs a weight"):
        project_into(lat[:, 2:2 + s], a, None, None)
    with pytest.raises(ValueError, match="activation must be"):
        project_into(lat[:, 2:2 + s], a, w, bias, precision, "relu")
    with pytest.raises(ValueError, match="must agree"):
        project_into(lat[:, 2:2 + s], a[:-1], w, bias)


@needs_triton
@pytest.mark.parametrize("precision", ["ieee", "tf32", "tf32x3"])
@pytest.mark.parametrize("shape", [(6, 20), (5, 3, 20)])
def test_triton_ops_linear_follows_the_precision(precision, shape):
    """``TritonOps.linear`` on float32 operands: cuBLAS / the reference GEMM in the exact mode, the Triton projection
    kernel at a tensor-core precision (the interpreter multiplies exact fp32); bf16 operands stay on the GEMM."""
    g = torch.Generator().manual_seed(4)
    x = _randn(*shape, gen=g)
    w, b = _randn(33, 20, gen=g, scale=20 ** -0.5), _randn(33, gen=g)
    got = TritonOps(precision).linear(x, w, b)
    assert got.shape == (*shape[:-1], 33) and got.is_contiguous()
    torch.testing.assert_close(got, REF.linear(x, w, b), **_tol(torch.float32, precision))
    out = torch.full((*shape[:-1], 33), 9.0, device=DEVICE)
    assert TritonOps(precision).linear(x, w, b, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, REF.linear(x, w, b), **_tol(torch.float32, precision))


@needs_triton
def test_gated_residual_bad_inputs():
    from lewm_fast.kernels.gated_residual import gated_residual

    x = torch.zeros(2, 3, 8, device=DEVICE)
    a = torch.zeros(2, 3, 5, device=DEVICE)
    with pytest.raises(ValueError, match="weight must be"):
        gated_residual(x, a, torch.zeros(5, 8, device=DEVICE), None, x)
    with pytest.raises(ValueError, match="share a dtype"):
        gated_residual(x, a, torch.zeros(8, 5, device=DEVICE, dtype=torch.bfloat16), None, x)
    with pytest.raises(ValueError, match="must agree"):
        gated_residual(x, a, torch.zeros(8, 5, device=DEVICE), None, x[:, :2])


# ------------------------------------------------------------------------------------------------------- goal_cost
@needs_triton
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32x3"), (torch.bfloat16, "ieee")])
@pytest.mark.parametrize("shape", [(7, 1, 48, 32), (12, 3, 70, 19), (40, 2, 16, 200), (600, 2, 24, 192)])
def test_goal_cost_matches_torch(dtype, precision, shape):
    from lewm_fast.kernels.goal_cost import goal_cost

    m, b, k, d = shape
    g = torch.Generator().manual_seed(2)
    hidden = _randn(m, k, gen=g, dtype=dtype)
    w = _randn(d, k, gen=g, dtype=dtype, scale=k ** -0.5)
    bias = _randn(d, gen=g)
    goal = _randn(b, d, gen=g)
    got = goal_cost(hidden, w, bias, goal, precision)
    y = hidden.double() @ w.double().t() + bias.double()
    want = (y.view(b, -1, d) - goal.double().unsqueeze(1)).square().sum(-1).reshape(-1)
    assert got.dtype == torch.float32 and got.shape == (m,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype == torch.float32 else 3e-2, atol=1e-4)
    if dtype == torch.float32:
        torch.testing.assert_close(REF.goal_cost(hidden, w, bias, goal), got, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(goal_cost(hidden, w, None, goal).double(),
                                   (hidden.double() @ w.double().t()).view(b, -1, d).sub(goal.double().unsqueeze(1)).square().sum(-1).reshape(-1),
                                   rtol=1e-5, atol=1e-4)


@needs_triton
def test_goal_cost_bad_inputs():
    from lewm_fast.kernels.goal_cost import goal_cost

    h = torch.zeros(6, 4, device=DEVICE)
    w = torch.zeros(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="must divide"):
        goal_cost(h, w, None, torch.zeros(4, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight must have shape \(D=5"):
        goal_cost(h, w, None, torch.zeros(2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="bias must have shape"):
        goal_cost(h, w, torch.zeros(4, device=DEVICE), torch.zeros(2, 3, device=DEVICE))


# ---------------------------------------------------------------------------------------- C++ whole-window blocks
@needs_csrc
@pytest.mark.parametrize("s,p", [(3, 0), (2, 1), (1, 2), (1, 0)])
@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_window_blocks_cpp_matches_op_by_op(s, p, chunk_rows, tiny_model):
    """All blocks of a rollout step in one C++ call == the op-by-op schedule on the plain-PyTorch ops."""
    from lewm_fast.planning.fused_predictor import FusedRollout

    torch.manual_seed(0)
    engine = FusedRollout(tiny_model, PredictorOps())
    pk = engine.packed
    m, b, d = 10, 2, tiny_model.latent_dim
    x = torch.randn(m, s, d)
    mods = torch.randn(m, s + 2, pk.depth, 6, d)[:, 1:s + 1]
    prefix = None
    if p:
        _, prefix = engine.blocks(torch.randn(b, p, d), torch.randn(b, p, pk.depth, 6, d), None, "kv")
    want = engine.blocks(x.clone(), mods, prefix, "last")[0]
    ops = CpuOps()
    ops.chunk_rows = chunk_rows
    inner = pk.heads * pk.dim_head
    assert all(not blk.qkv_b[inner:].any() for blk in pk.blocks)  # packed keys/values carry no bias
    weights, eps, _, _ = FusedRollout(tiny_model, CpuOps())._window_args()
    x_in = x.clone()
    got = ops.window_blocks(x_in, mods, prefix, weights, eps, pk.heads, "none")
    assert torch.equal(x_in, x)  # the input stays untouched
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_csrc
@pytest.mark.parametrize("s,p", [(3, 0), (1, 2)])
@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_window_blocks_cpp_head_matches_op_by_op(s, p, chunk_rows, tiny_model):
    """With the folded head: next latents == blocks + head, and with a goal the costs == head_cost (op by op)."""
    from lewm_fast.planning.fused_predictor import FusedRollout

    torch.manual_seed(1)
    engine = FusedRollout(tiny_model, PredictorOps())
    fast = FusedRollout(tiny_model, CpuOps())
    fast.ops.chunk_rows = chunk_rows
    assert fast.whole_step and not engine.whole_step
    pk = engine.packed
    m, b, d = 12, 3, tiny_model.latent_dim
    x = torch.randn(m, s, d)
    mods = torch.randn(m, s, pk.depth, 6, d)
    goal = torch.randn(b, d)
    prefix = None
    if p:
        _, prefix = engine.blocks(torch.randn(b, p, d), torch.randn(b, p, pk.depth, 6, d), None, "kv")
    x_last = engine.blocks(x.clone(), mods, prefix, "last")[0]
    torch.testing.assert_close(fast.step(x, mods, prefix), engine.head(x_last)[:, 0], rtol=1e-5, atol=1e-5)
    got = fast.step(x, mods, prefix, goal)
    assert got.shape == (m,)
    torch.testing.assert_close(got, engine.head_cost(x_last, goal), rtol=1e-5, atol=1e-5)


@needs_csrc
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_window_blocks_cpp_gelu_over_a_wide_range(approximate, tiny_model):
    """The C++ blocks against the op-by-op schedule with MLP pre-activations spanning about +-40 (input weights
    scaled up), for both GELU forms."""
    import copy

    from lewm_fast.planning.fused_predictor import FusedRollout

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for blk in model.predictor.transformer.layers:
            blk.mlp.net[1].weight.mul_(20.0)
            blk.mlp.net[2].approximate = approximate
    torch.manual_seed(2)
    engine, fast = FusedRollout(model, PredictorOps()), FusedRollout(model, CpuOps())
    pk = engine.packed
    x, mods = torch.randn(9, 3, model.latent_dim), torch.randn(9, 3, pk.depth, 6, model.latent_dim)
    blk = pk.blocks[0]
    h = fast.ops.adaln_linear(x, mods[:, :, 0, 3], mods[:, :, 0, 4], blk.eps2, blk.eps_mlp, blk.fc1_w, blk.fc1_b)
    assert h.abs().max() > 20  # the range is exercised
    want = engine.blocks(x.clone(), mods, None, "last")[0]
    torch.testing.assert_close(fast.last_token(x, mods, None), want, rtol=1e-5, atol=1e-5)


needs_packing = pytest.mark.skipif(
    not (csrc_available() and torch.ops.lewm_fast.window_packing_available()),
    reason="needs the C++ extension and MKL's packed GEMM (torch's MKL builds)",
)


@pytest.fixture(scope="module")
def odd_model():
    """Widths that leave partial blocks in every packed GEMM: 5 heads of 64 (head groups of 4 + 1), MLP 600 and head
    520 hidden units (slices of 512 + the rest); D=40, not a multiple of 16 (the C++ row loops' generic path)."""
    from conftest import randomize_, tiny_config

    from lewm_fast import build_model

    torch.manual_seed(4)
    return randomize_(build_model(tiny_config(latent_dim=40, heads=5, dim_head=64, mlp_dim=600, proj_hidden_dim=520))).eval()


@needs_packing
@pytest.mark.parametrize("s,p", [(3, 0), (2, 1)])
@pytest.mark.parametrize("chunk_rows", [5, 1000])
def test_window_blocks_cpp_packed_weights(s, p, chunk_rows, odd_model):
    """MKL-packed weights (CpuOps.window_pack) with partial head groups and MLP slices: latents and costs == the
    op-by-op schedule, and == the unpacked C++ path."""
    from lewm_fast.planning.fused_predictor import FusedRollout

    torch.manual_seed(5)
    engine = FusedRollout(odd_model, PredictorOps())
    fast = FusedRollout(odd_model, CpuOps())
    fast.ops.chunk_rows = chunk_rows
    weights, eps, head, packed = fast._window_args()
    assert packed is not None and packed.dtype == torch.uint8 and fast.whole_step
    pk = engine.packed
    m, b, d = 12, 3, odd_model.latent_dim
    x, mods, goal = torch.randn(m, s, d), torch.randn(m, s, pk.depth, 6, d), torch.randn(b, d)
    prefix = None
    if p:
        _, prefix = engine.blocks(torch.randn(b, p, d), torch.randn(b, p, pk.depth, 6, d), None, "kv")
    x_last = engine.blocks(x.clone(), mods, prefix, "last")[0]
    args = (x, mods, prefix, weights, eps, pk.heads, "none", head)
    torch.testing.assert_close(fast.step(x, mods, prefix), engine.head(x_last)[:, 0], rtol=1e-5, atol=1e-5)
    costs = fast.step(x, mods, prefix, goal)
    torch.testing.assert_close(costs, engine.head_cost(x_last, goal), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(costs, fast.ops.window_blocks(*args, goal), rtol=1e-6, atol=1e-6)  # unpacked
    # blocks only (no head): packed without the head
    packed_blocks = fast.ops.window_pack(weights, pk.heads)
    got = fast.ops.window_blocks(x, mods, prefix, weights, eps, pk.heads, "none", packed=packed_blocks)
    scale = x_last.abs().max().item()  # the raw residual stream, not normalised like the head's output
    assert scale > 1
    torch.testing.assert_close(got, x_last, rtol=1e-5, atol=1e-5 * scale)


@needs_packing
def test_window_blocks_cpp_packed_bad_inputs(odd_model):
    from lewm_fast.planning.fused_predictor import FusedRollout

    fast = FusedRollout(odd_model, CpuOps())
    weights, eps, head, packed = fast._window_args()
    pk = fast.packed
    x, mods = torch.randn(4, 2, odd_model.latent_dim), torch.randn(4, 2, pk.depth, 6, odd_model.latent_dim)
    run = lambda w, packed, head=head, x=x, mods=mods: fast.ops.window_blocks(  # noqa: E731
        x, mods, None, w, eps, pk.heads, "none", head, None, packed)
    run(weights, packed)
    with pytest.raises(ValueError, match="made from other weight tensors"):
        run([w.clone() for w in weights], packed)
    with pytest.raises(ValueError, match="made from other weight tensors"):
        run(weights, packed, head=None)  # packed with the head's weights
    with pytest.raises(ValueError, match="bytes; these weights need"):
        run(weights, torch.cat([packed, torch.zeros(64, dtype=torch.uint8)]))
    with pytest.raises(ValueError, match="uint8 buffer"):
        run(weights, packed.view(torch.float32))
    with pytest.raises(ValueError, match="packed weights are float32"):
        run([w.double() for w in weights], packed, head=[*(t.double() for t in head[:4]), *head[4:]], x=x.double(),
            mods=mods.double())
    assert fast.ops.window_pack([w.double() for w in weights], pk.heads) is None  # float32 only
    with pytest.raises(ValueError, match="rows must be >= 1"):
        torch.ops.lewm_fast.window_pack(weights, pk.heads, [], 0)


def _window_blocks(x, mods, weights, head=(), goal=None):
    return torch.ops.lewm_fast.window_blocks(x, mods, [], weights, [1e-6] * 4, 1, "none", 8, head, 1e-6, "none", goal)


@needs_csrc
def test_window_blocks_cpp_bad_inputs(tiny_model):
    x, mods = torch.zeros(2, 1, 4), torch.zeros(2, 1, 1, 6, 4)
    with pytest.raises(ValueError, match="9 tensors per block"):
        _window_blocks(x, mods, [torch.zeros(1)] * 8)
    w = [torch.zeros(1)] * 9
    with pytest.raises(ValueError, match="mods must be"):
        _window_blocks(x, torch.zeros(2, 1, 1, 5, 4), w)
    w = [torch.zeros(12, 4), torch.zeros(4), torch.zeros(4, 4), torch.zeros(4), torch.zeros(8, 4), torch.zeros(8),
         torch.zeros(4, 8), torch.zeros(4), torch.zeros(4, 4)]
    head = [torch.zeros(8, 4), torch.zeros(8), torch.zeros(3, 8), torch.zeros(3)]
    assert _window_blocks(x, mods, w, head).shape == (2, 3)
    assert _window_blocks(x, mods, w, head, torch.zeros(1, 3)).shape == (2,)
    names = ["qkv weight", "query bias", "to_out weight", "to_out bias", "fc1 weight", "fc1 bias", "fc2 weight",
             "fc2 bias", "ov weight"]
    for k, name in enumerate(names):  # the C++ GEMMs read raw pointers: each shape must be checked
        bad = list(w)
        bad[k] = torch.zeros(*w[k].shape[:-1], w[k].shape[-1] + 1)
        match = "qkv weight of block 0 must be" if k == 0 else f"{name} of block 0 must be"
        with pytest.raises(ValueError, match=match):
            _window_blocks(x, mods, bad, head)
    with pytest.raises(ValueError, match="4 tensors"):
        _window_blocks(x, mods, w, head[:3])
    with pytest.raises(ValueError, match="head must be w1"):
        _window_blocks(x, mods, w, [head[0], head[1], torch.zeros(3, 7), head[3]])
    with pytest.raises(ValueError, match="goal must be"):
        _window_blocks(x, mods, w, head, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="goal needs the head"):
        _window_blocks(x, mods, w, [], torch.zeros(1, 3))


@needs_triton
def test_triton_ops_adaln_linear_above_the_fused_size_runs_apart():
    """Above MAX_ROWS rows (many environments) TritonOps runs the pre-norm kernel apart from the GEMM for float32
    weights (cuBLAS without an activation; with a GELU, the projection kernel with the GELU as its epilogue): the same
    values. bf16 weights stay fused there (64-row panels), except on GPUs without room for them."""
    from lewm_fast.kernels import adaln_linear as fused
    from lewm_fast.ops.launches import record_launches
    from lewm_fast.ops.predictor import TritonOps

    g = torch.Generator().manual_seed(5)
    rows, d, n = fused.MAX_ROWS + 3, 24, 20
    x, shift, mul = (_randn(rows, 1, d, gen=g) for _ in range(3))
    w, b = _randn(n, d, gen=g, scale=d ** -0.5), _randn(n, gen=g)
    got = TritonOps().adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu")
    torch.testing.assert_close(got, REF.adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu"), **TOL[torch.float32])
    meta = [t.to("meta") for t in (x, shift, mul, w, b)]
    with record_launches() as launches:
        TritonOps().adaln_linear(meta[0], meta[1], meta[2], 1e-6, 1e-5, meta[3], meta[4], "gelu")
    assert [x.name for x in launches] == ["_adaln_layernorm_kernel", "_gated_residual_kernel"]
    assert launches[1].kwargs["ACT"] == 1 and not launches[1].kwargs["GATED"]
    with record_launches() as launches:
        TritonOps().adaln_linear(meta[0], meta[1], meta[2], 1e-6, 1e-5, meta[3], meta[4], "none")
    assert [x.name for x in launches] == ["_adaln_layernorm_kernel"]
    wide = torch.empty(640, d, device="meta", dtype=torch.bfloat16)  # 10 column tiles: enough programs for 64 rows
    assert not fused.fused_fits(rows, 640, d, torch.float32, meta[0].device)
    assert fused.fused_fits(rows, 640, d, torch.bfloat16, meta[0].device)
    assert not fused.fused_fits(rows, n, d, torch.bfloat16, meta[0].device)  # one column tile: too few programs
    with record_launches() as launches:
        TritonOps().adaln_linear(meta[0], meta[1], meta[2], 1e-6, 1e-5, wide, None, "gelu")
    assert [(x.name, x.kwargs["BLOCK_M"]) for x in launches] == [("_adaln_linear_kernel", 64)]


def test_adaln_linear_above_max_rows_bf16_matches_torch():
    """The fused kernel above MAX_ROWS rows with bf16 weights (64-row panels), against the reference op."""
    from lewm_fast.kernels import adaln_linear as fused
    from lewm_fast.ops.predictor import TritonOps

    g = torch.Generator().manual_seed(6)
    rows, d, n = fused.MAX_ROWS + 70, 24, 140
    x, shift, mul = (_randn(rows, 1, d, gen=g) for _ in range(3))
    w, b = _randn(n, d, gen=g, scale=d ** -0.5, dtype=torch.bfloat16), _randn(n, gen=g)
    assert fused.fused_fits(rows, n, d, w.dtype, x.device)
    got = TritonOps().adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu")
    torch.testing.assert_close(got, REF.adaln_linear(x, shift, mul, 1e-6, 1e-5, w, b, "gelu"), **TOL[torch.bfloat16])
