"""Triton prefix attention against the plain PyTorch reference.

On a machine without CUDA the kernels run on CPU tensors through the Triton interpreter (set in
conftest.py, and again here in case this file runs alone): fp32 (plus a few fp16 cases; the
interpreter's bf16 is unreliable) on a sample of the case grid. With CUDA, fp16 and bf16 on a larger
sample (compile time is most of the cost there); XPREFIX_FULL_GRID=1 takes the whole product.

Pass condition, as in flash-attention's tests: max|out - ref_hi| <= 2 * max|ref_lo - ref_hi| + atol
(3x for gradients), where ref_hi is the reference in higher precision (fp64 for fp32 inputs, fp32
for fp16/bf16) and ref_lo the reference computed in the inputs' own dtype.
"""
import itertools
import os
import random

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402

from kernels import prefix_attention  # noqa: E402
from kernels.reference import prefix_attention_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# (B, Hq, Hkv): GQA ratios 1, 4 and 8
HEADS = [(2, 2, 2), (2, 4, 1), (1, 8, 1)]
SEQS = [(1, 37), (113, 203), (128, 128)]  # (M, N): decoding, ragged, square
PREFIX = [0, 1, 10, 17]
WINDOWS = [1, 16, 33, 100]  # sliding windows (causal only): itself alone, block-sized, ragged, wide


def _grid():
    dtypes = [torch.float16, torch.bfloat16] if CUDA else [torch.float32]
    dims = [64, 128] if CUDA else [16, 32, 64]
    full = list(itertools.product(dtypes, ["joint", "gated"], [True, False], dims, SEQS, PREFIX,
                                  HEADS, [False, True], [None]))
    windowed = list(itertools.product(dtypes, ["joint", "gated"], [True], dims, SEQS, PREFIX, HEADS,
                                      [False, True], WINDOWS))
    if CUDA and os.environ.get("XPREFIX_FULL_GRID") == "1":
        return full + windowed
    # a fixed sample keeps the interpreter (and GPU compile time) inside its budget
    cases = random.Random(0).sample(full, 36 if CUDA else 16)
    cases += random.Random(1).sample(windowed, 16 if CUDA else 8)
    if CUDA:  # tiny test models use head dim 32, which takes other tile sizes
        cases += [(torch.float16, "joint", False, 32, (128, 128), 17, (1, 8, 1), False, None),
                  (torch.bfloat16, "gated", True, 32, (113, 203), 10, (2, 4, 1), True, None),
                  (torch.float32, "joint", True, 32, (113, 203), 10, (2, 4, 1), True, None),
                  (torch.bfloat16, "joint", True, 256, (113, 203), 10, (2, 4, 1), True, 33),
                  (torch.float16, "gated", True, 256, (128, 128), 17, (1, 8, 1), False, None)]
    else:  # a few fp16 cases exercise the low-precision casts under the interpreter
        cases += [(torch.float16, "gated", True, 32, (113, 203), 10, (2, 4, 1), True, None),
                  (torch.float16, "joint", True, 64, (1, 37), 17, (1, 8, 1), True, None),
                  (torch.float32, "joint", True, 256, (113, 203), 10, (2, 4, 1), True, 33)]  # Gemma 3
    return cases


def _case_id(case):
    dtype, mode, causal, D, (M, N), P, (B, Hq, Hkv), pad, window = case
    return (f"{str(dtype)[6:]}-{mode}-{'causal' if causal else 'full'}-d{D}-m{M}n{N}-p{P}"
            f"-g{Hq // Hkv}-{'pad' if pad else 'nopad'}" + (f"-w{window}" if window else ""))


def _inputs(dtype, mode, D, M, N, P, B, Hq, Hkv, pad, shared=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    q, k, v = rand(B, Hq, M, D), rand(B, Hkv, N, D), rand(B, Hkv, N, D)
    pshape = (Hkv, P, D) if shared else (B, Hkv, P, D)
    pk, pv = (rand(*pshape), rand(*pshape)) if (P > 0 or mode == "gated") else (None, None)
    gate = torch.randn(Hq, generator=gen).to(DEVICE) if mode == "gated" else None
    key_start = None
    if pad:  # the last row is padded past its first queries, so some rows see no sequence key
        key_start = torch.randint(0, max(N // 2, 1), (B,), generator=gen)
        key_start[-1] = N - M // 2 - 1 if M > 1 else N - 1
        key_start = key_start.to(DEVICE)
    return [q, k, v, pk, pv, gate], key_start


def _run(fn, tensors, do, **kw):
    """Output and gradients of every tensor argument (None where an argument is None)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves, **kw)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], do.to(out.dtype))
    return out.detach(), list(grads)


def _compare(name, got, hi, lo, factor, atol):
    if got.numel() == 0:  # e.g. the gradient of an empty (P = 0) prefix
        assert hi.numel() == 0
        return
    got, hi, lo = got.double(), hi.double(), lo.double()
    err, ref_err = (got - hi).abs(), (lo - hi).abs()
    print(f"{name}: max err {err.max():.3e} mean {err.mean():.3e} | ref lowp max {ref_err.max():.3e} "
          f"mean {ref_err.mean():.3e}")
    assert not torch.isnan(got).any(), f"{name} has NaN"
    assert err.max() <= factor * ref_err.max() + atol, f"{name}: {err.max():.3e} > tolerance"


def _check(case, shared=True, scale=None, attention=prefix_attention):
    """One case of the grid through `attention` (test_split_attention.py passes the split route)."""
    dtype, mode, causal, D, (M, N), P, (B, Hq, Hkv), pad, window = case
    tensors, key_start = _inputs(dtype, mode, D, M, N, P, B, Hq, Hkv, pad, shared)
    kw = dict(causal=causal, scale=scale, key_start=key_start, window=window)
    hi_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    do = torch.randn(B, Hq, M, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    out, grads = _run(attention, tensors, do, **kw)
    hi_in = [t.to(hi_dtype) if t is not None else None for t in tensors]
    ref_hi, grads_hi = _run(prefix_attention_ref, hi_in, do, **kw)
    ref_lo, grads_lo = _run(lambda *a, **k: prefix_attention_ref(*a, compute_dtype=dtype, **k),
                            tensors, do, **kw)
    atol = 1e-5 if dtype == torch.float32 else 1e-3
    _compare("out", out, ref_hi, ref_lo, 2, atol)
    # A flash backward takes each row's rowsum(p * dp) as rowsum(dO * O), with O rounded to the output
    # dtype. Where the reference's own error vanishes (a row seeing one key, as with window 1: p = 1
    # and the true term is exactly 0), that rounding is the whole error of dq, dk and dpk: eps / 2 per
    # product, summed over D like a random walk, times |q| or |k| and the softmax scale (3x margin).
    sm_scale = D ** -0.5 if scale is None else scale
    delta_err = torch.finfo(dtype).eps / 2 * (do * ref_hi.to(do.dtype)).norm(dim=-1).max().item()
    qk = max(t.abs().max().item() for t in tensors[:2])
    names = [n for n, t in zip(["dq", "dk", "dv", "dpk", "dpv", "dgate"], tensors) if t is not None]
    for name, g, g_hi, g_lo in zip(names, grads, grads_hi, grads_lo):
        g_scale = g_hi.abs().max().item() if g_hi.numel() else 1.0
        rounding = 3 * delta_err * qk * sm_scale if name in ("dq", "dk", "dpk") else 0.0
        _compare(name, g, g_hi, g_lo, 3, atol * max(1.0, g_scale) + rounding)


@pytest.mark.parametrize("case", _grid(), ids=_case_id)
def test_matches_reference(case):
    _check(case)


@pytest.mark.parametrize("mode", ["joint", "gated"])
def test_per_sequence_prefix_and_custom_scale(mode):
    dtype = torch.float16 if CUDA else torch.float32
    _check((dtype, mode, True, 32, (37, 70), 10, (2, 4, 2), True, None), shared=False, scale=0.3)


def test_noncontiguous_inputs():
    # adapters.py hands over (B, M, H, D) projections transposed to (B, H, M, D) views
    dtype = torch.float16 if CUDA else torch.float32
    B, M, Hq, Hkv, D, P = 2, 40, 4, 2, 32, 10
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, M, Hq, D, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    k = torch.randn(B, M, Hkv, D, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    v = torch.randn(B, M, Hkv, D, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    pk = torch.randn(P, Hkv, D, generator=gen).to(DEVICE, dtype).transpose(0, 1)
    pv = torch.randn(Hkv, P, 2 * D, generator=gen).to(DEVICE, dtype)[..., ::2]  # unit stride lost
    out = prefix_attention(q, k, v, pk, pv)
    ref = prefix_attention(q.contiguous(), k.contiguous(), v.contiguous(), pk.contiguous(),
                           pv.contiguous())
    assert torch.equal(out, ref)


def _plain_inputs(dtype, seed=0, B=2, Hq=4, Hkv=2, M=50, N=50, D=32, P=10):
    tensors, _ = _inputs(dtype, "gated", D, M, N, P, B, Hq, Hkv, pad=False, seed=seed)
    return tensors


def test_zero_gate_is_plain_causal_attention():
    dtype = torch.float16 if CUDA else torch.float32
    q, k, v, pk, pv, gate = _plain_inputs(dtype)
    plain = prefix_attention(q, k, v)
    gated = prefix_attention(q, k, v, pk, pv, torch.zeros_like(gate))
    assert torch.equal(gated, plain)


def test_no_prefix_is_plain_causal_attention():
    dtype = torch.float16 if CUDA else torch.float32
    q, k, v, pk, pv, _ = _plain_inputs(dtype)
    empty = pk[:, :0]  # (H_kv, 0, D)
    assert torch.equal(prefix_attention(q, k, v, empty, empty), prefix_attention(q, k, v))
    ref = prefix_attention_ref(q.double(), k.double(), v.double())
    assert (prefix_attention(q, k, v).double() - ref).abs().max() < (1e-5 if dtype == torch.float32 else 5e-3)


@pytest.mark.parametrize("mode", ["joint", "gated"])
def test_repeated_runs_bit_identical(mode):
    dtype = torch.bfloat16 if CUDA else torch.float32
    tensors, key_start = _inputs(dtype, mode, 32, 70, 90, 17, 2, 8, 2, pad=True)
    do = torch.randn(2, 8, 70, 32).to(DEVICE)
    first = _run(prefix_attention, tensors, do, key_start=key_start)
    for _ in range(2):
        again = _run(prefix_attention, tensors, do, key_start=key_start)
        assert torch.equal(first[0], again[0])
        assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))


def test_empty_rows_give_zeros():
    dtype = torch.float16 if CUDA else torch.float32
    q, k, v, pk, pv, gate = _plain_inputs(dtype, M=20, N=20)
    key_start = torch.tensor([0, 12], device=DEVICE)  # row 1: queries 0..11 see no sequence key
    do = torch.randn(2, 4, 20, 32).to(DEVICE)
    out, grads = _run(prefix_attention, [q, k, v], do, key_start=key_start)
    assert torch.equal(out[1, :, :12], torch.zeros_like(out[1, :, :12]))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][1, :, :12], torch.zeros_like(grads[0][1, :, :12]))
    # gated: the sequence part is empty, only the gated prefix remains
    out = prefix_attention(q, k, v, pk, pv, gate, key_start=key_start)
    ref = prefix_attention_ref(q, k, v, pk, pv, gate, key_start=key_start)
    assert torch.isfinite(out).all()
    assert (out.float() - ref.float()).abs().max() < (1e-5 if dtype == torch.float32 else 5e-3)
    # joint: a padded query row still sees the prefix
    out = prefix_attention(q, k, v, pk, pv, key_start=key_start)
    assert torch.isfinite(out).all() and out[1, :, :12].abs().sum() > 0


def test_bad_inputs_raise():
    q, k, v, pk, pv, gate = _plain_inputs(torch.float16 if CUDA else torch.float32)
    bad = [
        (dict(k=k[:, :, :10]), "k and v"),
        (dict(q=q[:, :3]), "multiple"),
        (dict(prefix_k=pk, prefix_v=None), "both"),
        (dict(gate=gate), "needs prefix_k"),
        (dict(prefix_k=pk, prefix_v=pv, gate=gate[:2]), "gate"),
        (dict(prefix_k=pk[:1], prefix_v=pv[:1]), "prefix_k/prefix_v"),
        (dict(v=v.double(), k=k.double()), "dtype"),
        (dict(key_start=torch.zeros(2)), "key_start"),
        (dict(q=q[..., :24], k=k[..., :24], v=v[..., :24]), "head dim"),
        (dict(q=torch.cat([q, q], 2)), "M <= N"),
        (dict(window=0), "window must be a positive int"),
        (dict(window=4, causal=False), "window needs causal=True"),
    ]
    for override, words in bad:
        args = dict(q=q, k=k, v=v, prefix_k=None, prefix_v=None, gate=None, key_start=None)
        args.update(override)
        key_start = args.pop("key_start")
        with pytest.raises(ValueError, match=words):
            prefix_attention(**args, key_start=key_start)


@cuda
def test_cpu_tensor_rejected_on_gpu_machine():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="CUDA"):
        prefix_attention(q, q, q)


@cuda
def test_long_sequence_bf16():
    # long enough for many unmasked interior blocks with the GPU tile sizes
    _check((torch.bfloat16, "joint", True, 128, (1000, 1500), 10, (1, 8, 2), True, None))
    _check((torch.bfloat16, "gated", True, 64, (1024, 1024), 64, (2, 4, 1), True, None))
    # Gemma 3's shape: head dim 256, a 512-key window, so many key blocks are skipped or masked
    _check((torch.bfloat16, "joint", True, 256, (1000, 1500), 10, (1, 4, 1), True, 512))
