"""The split route (kernels/split_attention.py) against the plain PyTorch reference.

Same odd-shape grid and pass condition as tests/test_kernels.py: max|out - ref_hi| <= 2 * max|ref_lo -
ref_hi| + atol (3x for gradients), ref_hi the reference in higher precision, ref_lo in the inputs' own
dtype. On the CPU the sequence part is aten's CPU flash op (its mask, GQA and is_causal as the route
uses them) and the Triton kernels run in the interpreter, fp32 and bf16. The CUDA sequence op
(FlashAttention-2, dense and variable-length for left padding) is also run on the CPU through an
emulation of its documented contract (_fa2_forward/_fa2_backward below), so the glue around it (layouts,
cu_seqlens, log-sum-exp layouts, padding rows) is tested here; only the op itself waits for a GPU
(the `cuda` tests).
"""
import itertools
import os
import random

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402

import kernels.split_attention as split  # noqa: E402
from kernels import prefix_attention  # noqa: E402
from kernels.prefix_attention import choose_impl, split_is_faster  # noqa: E402
from kernels.reference import prefix_attention_ref  # noqa: E402
from test_kernels import _case_id, _check as _check_route, _inputs, _run  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
cuda = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]

HEADS = [(2, 2, 2), (2, 4, 1), (1, 8, 1)]  # (B, Hq, Hkv): GQA 1, 4, 8
SEQS = [(1, 37), (113, 203), (128, 128), (37, 70)]  # decoding, ragged, square, short ragged
PREFIX = [0, 1, 10, 17, 64]
WINDOWS = [1, 16, 33, 100]


def _grid(n_full, n_windowed, seed, dtypes, dims):
    full = list(itertools.product(dtypes, ["joint", "gated"], [True, False], dims, SEQS, PREFIX, HEADS,
                                  [False, True], [None]))
    windowed = list(itertools.product(dtypes, ["joint", "gated"], [True], dims, SEQS, PREFIX, HEADS,
                                      [False, True], WINDOWS))
    return random.Random(seed).sample(full, n_full) + random.Random(seed + 1).sample(windowed, n_windowed)


def _split(*args, **kw):
    return prefix_attention(*args, impl="split", **kw)


def _check(case, shared=True, scale=None):
    _check_route(case, shared, scale, attention=_split)


# ----------------------------------------------------------------------------------------------
# FlashAttention-2's contract, emulated on any device: q (B, M, H, D) or, with cu_seqlens, (total, H, D)
# packed sequences; causal bottom-right per sequence (query i sees key j <= i + Nk - Mq), a window
# (left, right) around that diagonal, GQA by head groups (head h reads kv head h // (H / Hkv)); natural
# log-sum-exp in fp32, (B, H, M) dense or (H, total_q) varlen; rows with no key give 0 and lse +inf.

def _fa2_sequences(q, k, cu_q, cu_k):
    if cu_q is None:
        return [(slice(None), slice(None), b) for b in range(q.shape[0])]
    return [(slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1])), None)
            for s in range(len(cu_q) - 1)]


def _fa2_scores(q, k, causal, scale, left, right):
    """q (Mq, H, D), k (Nk, Hkv, D) -> fp32 scores (H, Mq, Nk) and the allowed mask (Mq, Nk)."""
    Mq, Nk, group = q.shape[0], k.shape[0], q.shape[-2] // k.shape[-2]
    kk = k.float().repeat_interleave(group, dim=1)  # (Nk, H, D)
    s = torch.einsum("mhd,nhd->hmn", q.float(), kk) * scale
    diag = torch.arange(Mq, device=q.device)[:, None] + Nk - Mq
    j = torch.arange(Nk, device=q.device)[None, :]
    right = 0 if causal else right
    ok = torch.ones(Mq, Nk, dtype=torch.bool, device=q.device)
    if left is not None and left >= 0:
        ok = ok & (j >= diag - left)
    if right is not None and right >= 0:
        ok = ok & (j <= diag + right)
    return s, ok


def _fa2_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *, scale=None,
                 window_size_left=None, window_size_right=None):
    out, lses = torch.zeros_like(q), []
    for qs, ks, b in _fa2_sequences(q, k, cu_q, cu_k):
        qq, kk, vv = (q[b], k[b], v[b]) if b is not None else (q[qs], k[ks], v[ks])
        s, ok = _fa2_scores(qq, kk, is_causal, scale, window_size_left, window_size_right)
        s = s.masked_fill(~ok, float("-inf"))
        lse = torch.logsumexp(s, -1)  # (H, Mq)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        o = torch.einsum("hmn,nhd->mhd", p, vv.float().repeat_interleave(q.shape[-2] // k.shape[-2], dim=1))
        lses.append(lse.masked_fill(lse == float("-inf"), float("inf")))
        if b is not None:
            out[b] = o.to(q.dtype)
        else:
            out[qs] = o.to(q.dtype)
    lse = torch.stack(lses) if cu_q is None else torch.cat(lses, dim=1)
    return out, lse, torch.zeros(2, device=q.device), torch.empty(0, device=q.device), torch.empty(0)


def _fa2_backward(do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, rng, unused, *,
                  scale=None, window_size_left=None, window_size_right=None):
    # the real op reads softmax_lse through its pointer as a contiguous array, whatever its strides (an
    # H200 run of 2026-12-04: a strided (H, B*M) view at M = 1 gave dq off by up to 48, silently)
    lse = lse.as_strided(lse.shape, torch.empty(lse.shape, device="meta").stride(), lse.storage_offset())
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    group = q.shape[-2] // k.shape[-2]
    for n, (qs, ks, b) in enumerate(_fa2_sequences(q, k, cu_q, cu_k)):
        idx_q, idx_k = (b, b) if b is not None else (qs, ks)
        qq, kk, vv, oo, dd = q[idx_q], k[idx_k], v[idx_k], out[idx_q], do[idx_q]
        ll = lse[b] if b is not None else lse[:, qs]  # (H, Mq)
        s, ok = _fa2_scores(qq, kk, is_causal, scale, window_size_left, window_size_right)
        p = torch.exp(s - ll[..., None]) * ok  # (H, Mq, Nk)
        vr = vv.float().repeat_interleave(group, dim=1)
        dp = torch.einsum("mhd,nhd->hmn", dd.float(), vr)
        delta = (dd.float() * oo.float()).sum(-1).T  # (H, Mq): rowsum(dO * O), from the given O
        ds = p * (dp - delta[..., None])
        dq[idx_q] = (torch.einsum("hmn,nhd->mhd", ds, kk.float().repeat_interleave(group, dim=1)) * scale).to(q.dtype)
        dkr = torch.einsum("hmn,mhd->nhd", ds, qq.float()) * scale
        dvr = torch.einsum("hmn,mhd->nhd", p, dd.float())
        dk[idx_k] = dkr.view(dkr.shape[0], k.shape[-2], group, dkr.shape[-1]).sum(2).to(k.dtype)
        dv[idx_k] = dvr.view(dvr.shape[0], k.shape[-2], group, dvr.shape[-1]).sum(2).to(v.dtype)
    return dq, dk, dv


@pytest.fixture
def emulated_flash(monkeypatch):
    monkeypatch.setattr(split, "sequence_backend", lambda q: "flash")
    monkeypatch.setattr(split, "_flash_ops", lambda: (_fa2_forward, _fa2_backward))


# ----------------------------------------------------------------------------------------------

CPU_GRID = _grid(14, 6, seed=0, dtypes=[torch.float32], dims=[16, 32, 64]) + _grid(
    6, 3, seed=2, dtypes=[torch.bfloat16], dims=[32, 64]) + [
    (torch.float32, "joint", True, 256, (113, 203), 10, (2, 4, 1), True, 33),  # Gemma 3
    (torch.bfloat16, "gated", True, 256, (37, 70), 10, (2, 4, 1), True, None),
    (torch.float32, "joint", True, 128, (1, 37), 10, (2, 4, 1), True, None),  # decoding, left padded
    (torch.float16, "gated", True, 32, (113, 203), 17, (2, 4, 1), True, 16),
]
GPU_GRID = _grid(40, 16, seed=0, dtypes=[torch.float16, torch.bfloat16], dims=[64, 128, 256]) + [
    (torch.bfloat16, "joint", True, 32, (113, 203), 10, (2, 4, 1), True, None),
    (torch.bfloat16, "gated", True, 256, (1, 37), 10, (1, 8, 1), True, 16),
]


@pytest.mark.skipif(CUDA, reason="the CPU op; the GPU runs test_matches_reference_gpu")
@pytest.mark.parametrize("case", CPU_GRID, ids=_case_id)
def test_matches_reference_cpu(case):
    _check(case)


FLASH_GRID = _grid(10, 5, seed=4, dtypes=[torch.float32], dims=[16, 64]) + [
    (torch.bfloat16, "joint", True, 64, (113, 203), 10, (2, 4, 1), True, None),
    (torch.bfloat16, "gated", True, 32, (1, 37), 10, (1, 8, 1), True, 16),
    (torch.float32, "gated", False, 32, (37, 70), 10, (2, 4, 1), True, None),
    (torch.float32, "joint", True, 32, (1, 37), 10, (3, 4, 1), True, None),  # decoding, several rows
    (torch.float32, "joint", False, 16, (1, 37), 1, (3, 4, 4), True, None),
]


@pytest.mark.skipif(CUDA, reason="the GPU runs the real op (test_matches_reference_gpu)")
@pytest.mark.parametrize("case", FLASH_GRID, ids=_case_id)
def test_flash_glue_matches_reference(case, emulated_flash):
    _check(case)


CONCAT_CASES = [  # joint, no padding, no window: one FlashAttention call over [prefix; k]
    (torch.float32, "joint", True, 32, (113, 203), 17, (2, 4, 1), False, None),
    (torch.float32, "joint", False, 64, (37, 70), 1, (2, 2, 2), False, None),
    (torch.bfloat16, "joint", True, 16, (128, 128), 10, (1, 8, 1), False, None),
]


@pytest.mark.skipif(CUDA, reason="the GPU runs the real op (test_matches_reference_gpu)")
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("case", CONCAT_CASES, ids=_case_id)
def test_flash_joint_concat_matches_reference(case, shared, emulated_flash, monkeypatch):
    taken = []
    apply = split._FlashJointConcat.apply
    monkeypatch.setattr(split._FlashJointConcat, "apply", lambda *a: taken.append(1) or apply(*a))
    _check(case, shared=shared, scale=0.2 if shared else None)
    assert taken  # the shortcut, not the merge


@pytest.mark.parametrize("case", GPU_GRID, ids=_case_id)
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_matches_reference_gpu(case):
    _check(case)


@pytest.mark.parametrize("mode", ["joint", "gated"])
def test_per_sequence_prefix_and_custom_scale(mode):
    dtype = torch.bfloat16 if CUDA else torch.float32
    _check((dtype, mode, True, 32, (37, 70), 10, (2, 4, 2), True, None), shared=False, scale=0.3)


@pytest.mark.parametrize("flash", [False, True])
def test_rows_that_see_nothing(flash, request):
    """Left padding past a row's first queries: joint rows get the prefix alone, gated rows 0 + gate *
    prefix, and with no prefix at all (P = 0) zeros with zero, finite gradients."""
    if flash:
        request.getfixturevalue("emulated_flash")
    dtype = torch.bfloat16 if CUDA else torch.float32
    for mode, P in (("joint", 10), ("gated", 10), ("joint", 0)):
        tensors, _ = _inputs(dtype, mode, 32, 20, 30, P, 2, 4, 2, pad=False)
        key_start = torch.tensor([0, 22], device=DEVICE)  # row 1: queries 0..11 see no sequence key
        do = torch.randn(2, 4, 20, 32).to(DEVICE)
        out, grads = _run(_split, tensors, do, key_start=key_start)
        ref, ref_grads = _run(prefix_attention_ref, tensors, do, key_start=key_start)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert all(torch.isfinite(g).all() for g in grads)
        for got, want in zip([out] + grads, [ref] + ref_grads):
            assert (got.float() - want.float()).abs().max() <= tol * max(1.0, want.abs().max().item())
        if P == 0:
            assert torch.equal(out[1, :, :12], torch.zeros_like(out[1, :, :12]))
            assert torch.equal(grads[0][1, :, :12], torch.zeros_like(grads[0][1, :, :12]))


def _wrong_sequence_ops(monkeypatch, wrong):
    """Stand a deliberately wrong merge in for the CPU sequence op, to show the tests can fail."""
    fwd, bwd = split.SEQUENCE_OPS["cpu"]

    def wrong_fwd(q, k, v, *rest):
        out, lse, state = fwd(q, k, v, *rest)
        state = dict(state, own=(out, lse))
        return out, (lse + 0.05 if wrong == "lse" else lse), state

    def wrong_bwd(do, q, k, v, out, lse, state, *rest):
        # the naive backward: the op's own (O_s, L_s) instead of the merged ones
        return bwd(do, q, k, v, *state["own"], state, *rest)
    monkeypatch.setitem(split.SEQUENCE_OPS, "cpu", (wrong_fwd, wrong_bwd if wrong == "backward" else bwd))


@pytest.mark.skipif(CUDA, reason="mutates the CPU sequence op")
@pytest.mark.parametrize("wrong", ["lse", "backward"])
def test_a_wrong_merge_fails(wrong, monkeypatch):
    case = (torch.float32, "joint", True, 32, (37, 70), 10, (2, 4, 1), True, None)
    _check(case)  # right as it stands
    _wrong_sequence_ops(monkeypatch, wrong)
    with pytest.raises(AssertionError, match="tolerance"):
        _check(case)


def test_zero_gate_and_no_prefix_are_the_sequence_op():
    dtype = torch.bfloat16 if CUDA else torch.float32
    (q, k, v, pk, pv, gate), _ = _inputs(dtype, "gated", 64, 50, 70, 10, 2, 4, 2, pad=False)
    plain = split.SEQUENCE_OPS[split.sequence_backend(q)][0](q, k, v, None, True, 0.125, None)[0]
    assert torch.equal(_split(q, k, v, pk, pv, torch.zeros_like(gate)), plain)
    assert torch.equal(_split(q, k, v), plain)
    assert torch.equal(_split(q, k, v, pk[:, :0], pv[:, :0]), plain)


@pytest.mark.parametrize("mode", ["joint", "gated"])
def test_split_backward_bit_identical(mode):
    """Our kernels sum in a fixed order; FlashAttention-2's backward accumulates dq with atomics unless
    PyTorch's deterministic mode is on, so on CUDA the route is bit-reproducible under that mode."""
    dtype = torch.bfloat16 if CUDA else torch.float32
    tensors, key_start = _inputs(dtype, mode, 32, 70, 90, 17, 2, 8, 2, pad=True)
    do = torch.randn(2, 8, 70, 32).to(DEVICE)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(CUDA or was)
    try:
        first = _run(_split, tensors, do, key_start=key_start)
        again = _run(_split, tensors, do, key_start=key_start)
    finally:
        torch.use_deterministic_algorithms(was)
    assert torch.equal(first[0], again[0]) and all(torch.equal(a, b) for a, b in zip(first[1], again[1]))


def test_impl_choice(monkeypatch):
    dtype = torch.bfloat16 if CUDA else torch.float32
    q = torch.randn(1, 2, 4, 16, device=DEVICE, dtype=dtype)
    pk = torch.randn(2, 10, 16, device=DEVICE, dtype=dtype)
    monkeypatch.delenv("XPREFIX_ATTN_IMPL", raising=False)
    assert choose_impl(q, pk) == "fused"  # four queries at D = 16: the fused kernel was faster on an H200
    # decoding at D >= 128 goes split on CUDA, never on the CPU interpreter
    decode = torch.randn(2, 2, 1, 128, device=DEVICE, dtype=dtype)
    assert choose_impl(decode, pk[..., :1].expand(2, 10, 128)) == ("split" if CUDA else "fused")
    assert [split_is_faster(M, D) for M, D in [(1, 128), (1, 256), (1, 64), (2, 128), (4096, 256)]] == \
        [True, True, False, False, False]
    assert choose_impl(q, pk, "split") == "split"
    monkeypatch.setenv("XPREFIX_ATTN_IMPL", "fused")
    assert choose_impl(q, pk) == "fused"
    too_long = torch.randn(2, split.MAX_PREFIX + 1, 16, device=DEVICE)
    assert choose_impl(q, too_long, "auto") == "fused"
    with pytest.raises(ValueError, match="at most 64 prefix keys"):
        choose_impl(q, too_long, "split")
    with pytest.raises(ValueError, match="impl must be one of"):
        choose_impl(q, pk, "flash")


def test_varlen_offsets():
    # B = 2, M = 3 queries over N = 5 keys; row 0 unpadded, row 1 padded to key 3: its query 0 sees
    # keys j <= 0 + 2 = 2 < 3, nothing, so it goes into the padding sequence with keys 0..2
    cu_q, cu_k = split._varlen_offsets(torch.tensor([0, 3]), 3, 5, causal=True)
    assert cu_q.tolist() == [0, 0, 3, 4, 6] and cu_k.tolist() == [0, 0, 5, 8, 10]
    cu_q, cu_k = split._varlen_offsets(torch.tensor([5, 2]), 3, 5, causal=False)
    assert cu_q.tolist() == [0, 3, 3, 3, 6] and cu_k.tolist() == [0, 5, 5, 7, 10]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_long_and_split_equals_fused_closely():
    # long enough for many tiles of the real flash op; Gemma 3's D = 256 with its 512-key window
    _check((torch.bfloat16, "joint", True, 128, (1000, 1500), 10, (1, 8, 2), True, None))
    _check((torch.bfloat16, "gated", True, 64, (1024, 1024), 64, (2, 4, 1), False, None))
    _check((torch.bfloat16, "joint", True, 256, (1000, 1500), 10, (1, 4, 1), True, 512))
    tensors, key_start = _inputs(torch.bfloat16, "gated", 128, 777, 777, 10, 2, 8, 2, pad=True)
    a = prefix_attention(*tensors, key_start=key_start, impl="split").float()
    b = prefix_attention(*tensors, key_start=key_start, impl="fused").float()
    assert (a - b).abs().max() < 2e-2


@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt"])
def test_tiny_llama_through_split_route_matches_torch_path(method, monkeypatch):
    """The attention hook (left padding and all) through the split route: logits and every trainable
    gradient agree with attn_backend 'torch'."""
    import copy

    import adapters
    from conftest import logits_and_grads
    from test_adapters import batch, tiny
    dtype = torch.bfloat16 if CUDA else torch.float32  # the CUDA op takes fp16/bf16
    base = tiny(hidden_size=64, num_attention_heads=4, num_key_value_heads=2).to(DEVICE, dtype)  # head dim 16
    ids, mask = (t.to(DEVICE) for t in batch())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    outs = {}
    monkeypatch.setenv("XPREFIX_ATTN_IMPL", "split")
    for backend in ("torch", "triton"):
        model = copy.deepcopy(base)
        adapters.attach(model, method, n_prefix_tokens=5, attn_backend=backend)
        model.to(dtype)
        if method == "adapter":
            for layer in model.model.layers:
                layer.self_attn.prefix_adapter.gate.data.fill_(0.7)
        outs[backend] = logits_and_grads(model, ids, mask, positions)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(outs["triton"][0], outs["torch"][0], **tol)
    for name, grad in outs["torch"][1].items():
        torch.testing.assert_close(outs["triton"][1][name], grad, **tol, msg=name)
