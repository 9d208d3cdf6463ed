"""The three retention forms are one function of their input (float64 to 1e-10)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from retnet_core.retention import (
    chunk_spans,
    retention_chunkwise,
    retention_denominator,
    retention_parallel,
    retention_recurrent,
)

H, DK, DV = 3, 8, 12


def _inputs(t: int, dtype=torch.float64, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, H, t, DK, generator=g, dtype=dtype)
    k = torch.randn(batch, H, t, DK, generator=g, dtype=dtype) / math.sqrt(DK)
    v = torch.randn(batch, H, t, DV, generator=g, dtype=dtype)
    s0 = torch.randn(batch, H, DK, DV, generator=g, dtype=dtype)
    log_decay = torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64)))
    return q, k, v, s0, log_decay.to(dtype)


def _naive(q, k, v, log_decay, s0=None):
    """o_n = Σ_{m≤n} γ^{n−m}(q_n·k_m) v_m + γ^{n+1} q_n S₀, literally, in float64."""
    gam = log_decay.exp()
    b, h, t, _ = q.shape
    out = torch.zeros(b, h, t, v.shape[-1], dtype=torch.float64)
    for n in range(t):
        for m in range(n + 1):
            w = (gam ** (n - m))[None, :, None]
            out[:, :, n] += w * (q[:, :, n] * k[:, :, m]).sum(-1, keepdim=True) * v[:, :, m]
        if s0 is not None:
            out[:, :, n] += (gam ** (n + 1))[None, :, None] * (q[:, :, n, None] @ s0)[:, :, 0]
    return out


def _random_boundaries(t: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.sample(range(1, t), k=min(t - 1, rng.randint(0, 6)))) if t > 1 else []
    if t > 3:  # force a length-1 chunk
        cuts = sorted(set(cuts) | {t - 2, t - 1})
    return cuts


def test_parallel_matches_literal_sum():
    q, k, v, s0, ld = _inputs(9)
    torch.testing.assert_close(
        retention_parallel(q, k, v, ld, state=s0), _naive(q, k, v, ld, s0), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("t", [1, 2, 7, 64, 300])
@pytest.mark.parametrize("with_state", [False, True])
def test_forms_agree_float64(t, with_state):
    q, k, v, s0, ld = _inputs(t, seed=t)
    s0 = s0 if with_state else None
    ref = retention_parallel(q, k, v, ld, state=s0)
    out_r, st_r = retention_recurrent(q, k, v, ld, state=s0)
    torch.testing.assert_close(out_r, ref, rtol=0, atol=1e-10)
    rng = random.Random(t)
    for chunk_size, bounds in [(None, None), (16, None), (None, _random_boundaries(t, rng)),
                               (5, _random_boundaries(t, rng))]:  # fmt: skip
        out_c, st_c = retention_chunkwise(q, k, v, ld, s0, chunk_size, bounds)
        torch.testing.assert_close(out_c, ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(st_c, st_r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("t", [7, 300])
def test_forms_agree_float32(t):
    q, k, v, s0, ld = _inputs(t, seed=1)
    ref = retention_parallel(q, k, v, ld, state=s0)
    q32, k32, v32, s32, ld32 = (x.float() for x in (q, k, v, s0, ld))
    scale = ref.abs().max()
    out_r, _ = retention_recurrent(q32, k32, v32, ld32, s32)
    out_c, _ = retention_chunkwise(q32, k32, v32, ld32, s32, boundaries=[1, 2, 5])
    out_p = retention_parallel(q32, k32, v32, ld32, s32)
    for out in (out_r, out_c, out_p):
        assert ((out.double() - ref).abs().max() / scale) < 1e-5


@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_state_carries_across_calls(form):
    q, k, v, s0, ld = _inputs(40, seed=3)
    run = retention_recurrent if form == "recurrent" else retention_chunkwise
    whole, st = run(q, k, v, ld, s0)
    a, st_a = run(q[:, :, :17], k[:, :, :17], v[:, :, :17], ld, s0)
    b, st_b = run(q[:, :, 17:], k[:, :, 17:], v[:, :, 17:], ld, st_a)
    torch.testing.assert_close(torch.cat([a, b], dim=2), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(st_b, st, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True])
def test_lengths_never_leak_padding(with_state):
    t, lengths = 23, torch.tensor([23, 9, 0])
    q, k, v, s0, ld = _inputs(t, batch=3, seed=4)
    s0 = s0 if with_state else None
    out_p = retention_parallel(q, k, v, ld, s0, lengths=lengths)
    out_r, st_r = retention_recurrent(q, k, v, ld, s0, lengths=lengths)
    out_c, st_c = retention_chunkwise(q, k, v, ld, s0, chunk_size=4, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        one = None if s0 is None else s0[b : b + 1]
        ref_o, ref_s = retention_recurrent(
            q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n], ld, one
        )
        for out in (out_p, out_r, out_c):
            torch.testing.assert_close(out[b : b + 1, :, :n], ref_o, rtol=0, atol=1e-10)
            assert torch.count_nonzero(out[b, :, n:]) == 0
        torch.testing.assert_close(st_r[b : b + 1], ref_s, rtol=0, atol=1e-10)
        torch.testing.assert_close(st_c[b : b + 1], ref_s, rtol=0, atol=1e-10)


def test_long_sequence_has_no_overflow():
    q, k, v, _, _ = _inputs(2, batch=1)
    ld = torch.full((H,), math.log(0.5), dtype=torch.float64)  # γ^-n would overflow at n ≈ 1100
    t = 1500
    q, k, v = (x.repeat(1, 1, t // 2, 1) for x in (q, k, v))
    out, st = retention_chunkwise(q, k, v, ld, chunk_size=512)
    assert torch.isfinite(out).all() and torch.isfinite(st).all()
    out_r, _ = retention_recurrent(q[:, :, -64:], k[:, :, -64:], v[:, :, -64:], ld)
    torch.testing.assert_close(out[:, :, -1], out_r[:, :, -1], rtol=0, atol=1e-10)


def test_chunk_spans():
    assert chunk_spans(10) == [(0, 10)]
    assert chunk_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_spans(10, 4, [3, 4, 10]) == [(0, 3), (3, 4), (4, 8), (8, 10)]
    assert chunk_spans(0) == []
    with pytest.raises(ValueError):
        chunk_spans(10, boundaries=[5, 3])
    with pytest.raises(ValueError):
        chunk_spans(10, boundaries=[11])


def test_denominator_modes():
    ld = torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64)))
    pos = torch.arange(50)[None]
    c = retention_denominator("decay", ld, pos)
    # c_p² = Σ_{j≤p} γ^j, summed literally
    lit = torch.stack([(ld.exp()[:, None] ** torch.arange(p + 1)).sum(-1) for p in range(50)], -1)
    torch.testing.assert_close(c[0] ** 2, lit, rtol=1e-12, atol=0)
    qz = torch.randn(1, H, 50, dtype=torch.float64) * 10
    d = retention_denominator("torchscale", ld, pos, qz)
    torch.testing.assert_close(d, torch.maximum(qz.abs(), c))
    assert retention_denominator("none", ld, pos) is None
    with pytest.raises(ValueError):
        retention_denominator("bogus", ld, pos)


def test_cpu_dispatch_runs_the_reference_without_fast_ops():
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from retnet_core import retention as R\n"
        "q = torch.randn(1, 2, 5, 4); ld = torch.log(torch.tensor([0.9, 0.8]))\n"
        "out, st = R.chunkwise(q, q, q, ld, chunk_size=2)\n"
        "ref, _ = R.retention_chunkwise(q, q, q, ld, chunk_size=2)\n"
        "assert torch.equal(out, ref)\n"
        "o1, _ = R.step(q[:, :, 0], q[:, :, 0], q[:, :, 0], ld)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('triton', 'fla')]\n"
        "bad += [m for m in sys.modules if m == 'retnet_core.fla_ops']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
