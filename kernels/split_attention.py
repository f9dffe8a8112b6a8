"""Split-and-merge prefix attention: the sequence part through PyTorch's fused attention ops, the
prefix part and the merge in Triton.

The fused kernel in prefix_attention.py runs the sequence keys through our own FlashAttention-2 loop,
at 0.70-0.77x of PyTorch's causal SDPA on an H100 (benchmarks/RESULTS.md). The prefix adds only P
(about 10) keys per query, so this route hands the sequence part to the ops SDPA itself dispatches to
and keeps only the small prefix part for Triton, as context-parallel attention merges its chunks
(Liu et al., 2023, "Ring Attention with Blockwise Transformers"; PyTorch's
torch.distributed.tensor.experimental context parallelism):

  * Forward: the sequence op returns O_s and its log-sum-exp L_s (natural log, per query row). One
    Triton kernel computes the prefix softmax O_p, L_p over the P prefix keys and merges. Joint
    (prefix tuning): L = logaddexp(L_s, L_p), out = exp(L_s - L) O_s + exp(L_p - L) O_p. Gated
    (LLaMA-Adapter): out = O_s + tanh(g) O_p.
  * Backward, joint: the op's own backward is called with the MERGED output and log-sum-exp. It forms
    P_ij = exp(S_ij - L) and D_i = rowsum(dO * O), which are exactly the joint softmax's, so it returns
    the sequence keys' dk, dv and their share of dq. Gated: the op's backward with its own O_s, L_s.
    A second Triton kernel adds the prefix keys' share of dq and writes per-chunk fp32 partials of
    dpk, dpv (and per-row dO . O_p for the gate) that torch sums in a fixed order: deterministic.
  * Rows that see no sequence key (left padding) count as empty whatever the op wrote there: O_s = 0,
    L_s = -inf, so joint rows get the prefix-only softmax and gated rows 0 + tanh(g) O_p, as the
    fused kernel and kernels/reference.py give. A row with nothing at all (P = 0) gives 0 and stores
    L = +inf, so every backward sees probability 0 there.

One shortcut: joint mode on CUDA with neither left padding nor a window needs no merge at all. One
FlashAttention-2 call over [prefix; k] applies exactly the joint mask (its causality is bottom-right),
at the cost of copying k and v; split_prefix_attention takes it where that copy moves fewer bytes than
the merge (training and prefill; decoding merges). See _FlashJointConcat.

Sequence ops, by device (the exact calls are in _cpu_* and _flash_*):
  * CPU: aten._scaled_dot_product_flash_attention_for_cpu and its backward. It takes GQA as is, an
    additive mask in q's dtype, and its is_causal is top-left aligned; our contract is bottom-right
    (query i sees key j <= i + N - M), so is_causal is used only for M == N and everything else
    (M < N, left padding, window) goes through an explicit mask. Fully masked rows come back as 0
    with log-sum-exp 0; the merge treats them as empty.
  * CUDA: aten._flash_attention_forward / _flash_attention_backward (FlashAttention-2, the op SDPA's
    flash backend calls), on the (B, M, H, D) layout adapters.py already has: GQA natively, causal
    bottom-right for M < N (which is why SDPA itself refuses flash for non-square causal masks), the
    window as window_size_left = window - 1. Left padding uses the op's variable-length form without
    copying into a packed batch: row b becomes two sequences, its padding (queries that see no real
    key, against the padding keys) and its real part, so cu_seqlens stay contiguous; outputs of the
    padding sequences are discarded by the merge and their dO zeroed for the backward. fp16/bf16 only.
    Not used: the efficient op (left padding only through a materialised (B, H, M, N) bias, its
    log-sum-exp padded to 32 rows) and cuDNN's (no window); bench_attention.py times both as
    candidates for the ceiling, so a GPU run shows whether either would be the faster sequence op.

Determinism: our kernels sum in a fixed order, but FlashAttention-2's backward accumulates dq with
atomics unless torch.use_deterministic_algorithms(True) is on; the fused route is always
bit-reproducible, the split route on CUDA only in that mode (as PyTorch's own SDPA backward).

Limits: P <= 64 prefix keys (the backward holds the whole prefix in one tile); on CUDA fp16/bf16 and
compute capability >= 8.0; otherwise as prefix_attention. split_unsupported() names what does not
fit, and prefix_attention(impl="auto") then takes the fused kernel.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.prefix_attention import (LOG2E, _interpreting, _last_contiguous, _prefix_grads, _prefix_strides,
                                      _setup_forward)

MAX_PREFIX = 64
# LOG2E for use inside kernels: compiled Triton (unlike the interpreter the tests run) refuses a
# plain-float module global in a kernel, so the kernels read this constexpr copy
LOG2E_K = tl.constexpr(LOG2E)


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # the interpreter's bf16 tl.dot is wrong (triton 3.9); bf16 products are exact in fp32
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _merge_fwd_kernel(Q, PK, PV, TanhGate, KeyStart, SeqOut, SeqLSE, Out, LSE, LSEP,
                      stride_qb, stride_qh, stride_qm, stride_pkb, stride_pkh, stride_pkn,
                      stride_pvb, stride_pvh, stride_pvn, stride_sb, stride_sh, stride_sm,
                      stride_lb, stride_lh, stride_lm, stride_ob, stride_oh, stride_om,
                      H, M, N, P, qk_scale,
                      GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                      CAUSAL: tl.constexpr, IS_GATED: tl.constexpr, HAS_KEY_START: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Prefix softmax over the P keys (one tile), then the merge with the sequence op's (SeqOut,
    SeqLSE). Writes Out, and LSE (joint: merged, natural log, for the sequence op's backward) or LSEP
    (gated: the prefix's, base 2, +inf where P = 0)."""
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < M
    key_ok = offs_p < P
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    pkT = tl.load(PK + b * stride_pkb + hk * stride_pkh + offs_p[None, :] * stride_pkn + offs_d[:, None],
                  mask=key_ok[None, :], other=0.0)  # (D, BLOCK_P)
    pv = tl.load(PV + b * stride_pvb + hk * stride_pvh + offs_p[:, None] * stride_pvn + offs_d[None, :],
                 mask=key_ok[:, None], other=0.0)  # (BLOCK_P, D)
    s = tl.where(key_ok[None, :], _dot(q, pkT, DOT_PRECISION, UPCAST) * qk_scale, float("-inf"))
    m_i = tl.max(s, 1)
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)  # P = 0: no prefix key, exp2 gives 0, not NaN
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = tl.sum(p, 1)
    acc = _dot(p.to(pv.dtype), pv, DOT_PRECISION, UPCAST)
    has_p = l_i > 0.0
    out_p = acc / tl.where(has_p, l_i, 1.0)[:, None]
    lse_p = tl.where(has_p, m_safe + tl.math.log2(tl.where(has_p, l_i, 1.0)), float("-inf"))  # base 2

    # the op's rows that see no sequence key are empty, whatever it wrote there (0 and lse 0 on the
    # CPU, the padding sequence's attention under flash varlen)
    key_start = tl.load(KeyStart + b).to(tl.int32) if HAS_KEY_START else 0
    if CAUSAL:
        last_key = offs_m + (N - M)
    else:
        last_key = tl.zeros([BLOCK_M], dtype=tl.int32) + (N - 1)
    seq_ok = row_ok & (last_key >= key_start)
    o_s = tl.load(SeqOut + b * stride_sb + h * stride_sh + offs_m[:, None] * stride_sm + offs_d[None, :],
                  mask=seq_ok[:, None], other=0.0).to(tl.float32)
    lse_s = tl.load(SeqLSE + b * stride_lb + h * stride_lh + offs_m * stride_lm, mask=seq_ok,
                    other=float("-inf")) * LOG2E_K
    lse_s = tl.where(seq_ok, lse_s, float("-inf"))
    if IS_GATED:
        out = o_s + tl.load(TanhGate + h) * out_p
        tl.store(LSEP + pid_bh * M + offs_m, tl.where(has_p, lse_p, float("inf")), mask=row_ok)
    else:
        top = tl.maximum(lse_s, lse_p)
        top = tl.where(top == float("-inf"), 0.0, top)  # a row with no key at all: weights 0, not NaN
        w_s = tl.math.exp2(lse_s - top)
        w_p = tl.math.exp2(lse_p - top)
        total = w_s + w_p
        empty = total == 0.0
        inv = 1.0 / tl.where(empty, 1.0, total)
        out = o_s * (w_s * inv)[:, None] + out_p * (w_p * inv)[:, None]
        lse = tl.where(empty, float("inf"), top + tl.math.log2(tl.where(empty, 1.0, total)))
        tl.store(LSE + pid_bh * M + offs_m, lse / LOG2E_K, mask=row_ok)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _prefix_bwd_kernel(Q, PK, PV, TanhGate, DO, Out, LSE, DQ, DPK, DPV, DotP,
                       stride_qb, stride_qh, stride_qm, stride_pkb, stride_pkh, stride_pkn,
                       stride_pvb, stride_pvh, stride_pvn, stride_dob, stride_doh, stride_dom,
                       stride_ob, stride_oh, stride_om, stride_dqb, stride_dqh, stride_dqm,
                       H, M, P, rows_per_program, qk_scale, sm_scale,
                       GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                       IS_GATED: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Grid (n_chunks, B * H). Adds the prefix keys' share to DQ (in place, over the op's dq) for the
    program's rows and writes fp32 partials DPK/DPV of shape (n_chunks, B, H, P, D). LSE is the
    merged natural-log lse (joint) or the prefix's base-2 lse (gated); DotP gets dO . O_p per row."""
    chunk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_p < P
    pk = tl.load(PK + b * stride_pkb + hk * stride_pkh + offs_p[:, None] * stride_pkn + offs_d[None, :],
                 mask=key_ok[:, None], other=0.0)  # (BLOCK_P, D)
    pv = tl.load(PV + b * stride_pvb + hk * stride_pvh + offs_p[:, None] * stride_pvn + offs_d[None, :],
                 mask=key_ok[:, None], other=0.0)  # (BLOCK_P, D)
    t = tl.load(TanhGate + h) if IS_GATED else 1.0
    dpk = tl.zeros([BLOCK_P, HEAD_DIM], dtype=tl.float32)
    dpv = tl.zeros([BLOCK_P, HEAD_DIM], dtype=tl.float32)
    lo = chunk * rows_per_program
    hi = tl.minimum(lo + rows_per_program, M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < M
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + pid_bh * M + offs_m, mask=row_ok, other=float("inf"))
        if not IS_GATED:
            lse = lse * LOG2E_K
        s = _dot(q, tl.trans(pk), DOT_PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_P)
        p = tl.where(key_ok[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(pv), DOT_PRECISION, UPCAST)  # dO . pv_j, before the gate
        if IS_GATED:
            # out = O_s + t O_p: the prefix softmax sees dO scaled by t, and D = t * rowsum(dO * O_p)
            dot_p = tl.sum(p * dp, 1)
            tl.store(DotP + pid_bh * M + offs_m, dot_p, mask=row_ok)
            ds = p * t * (dp - dot_p[:, None])
        else:
            o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                        mask=row_ok[:, None], other=0.0).to(tl.float32)
            delta = tl.sum(o * do.to(tl.float32), 1)  # the joint softmax's, as the op computes it
            ds = p * (dp - delta[:, None])
        dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :]
        dq = tl.load(dq_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        dq += _dot(ds.to(pk.dtype), pk, DOT_PRECISION, UPCAST) * sm_scale
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
        dpk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_PRECISION, UPCAST)
        dpv += _dot(tl.trans((p * t).to(do.dtype)), do, DOT_PRECISION, UPCAST)
    part = ((chunk * tl.num_programs(1) + pid_bh) * P + offs_p[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(DPK + part, dpk * sm_scale, mask=key_ok[:, None])
    tl.store(DPV + part, dpv, mask=key_ok[:, None])


# ----------------------------------------------------------------------------------------------
# the sequence part: (out (B, H, M, D), lse (B, H, M) natural log, state) forward; (dq, dk, dv) back

def _cpu_mask(q, k, key_start, causal, window):
    """Additive mask in q's dtype (the CPU op's only mask form), (B or 1, 1, M, N), or None when its
    own is_causal (top-left, so right only for M == N) or no mask is exact."""
    M, N = q.shape[2], k.shape[2]
    if key_start is None and window is None and (not causal or M == N or M == 1):
        return None
    i = torch.arange(M, device=q.device)[:, None]
    j = torch.arange(N, device=q.device)[None, :]
    allowed = (j <= i + N - M) if causal else torch.ones(M, N, dtype=torch.bool, device=q.device)
    if window is not None:
        allowed = allowed & (j > i + N - M - window)
    allowed = allowed[None, None]  # (1, 1, M, N)
    if key_start is not None:
        allowed = allowed & (j >= key_start.view(-1, 1, 1, 1))  # (B, 1, M, N)
    return torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))


def _cpu_forward(q, k, v, key_start, causal, scale, window):
    mask = _cpu_mask(q, k, key_start, causal, window)
    is_causal = causal and mask is None and q.shape[2] == k.shape[2]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
    return out, lse, dict(mask=mask, is_causal=is_causal)


def _cpu_backward(do, q, k, v, out, lse, state, causal, scale, window, key_start):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        do, q, k, v, out, lse, 0.0, state["is_causal"], attn_mask=state["mask"], scale=scale)


# the FlashAttention-2 ops, looked up at call time so tests can stand a CPU emulation in for them
def _flash_ops():
    return torch.ops.aten._flash_attention_forward, torch.ops.aten._flash_attention_backward


def _varlen_offsets(key_start, M, N, causal):
    """cu_seqlens for 2B sequences over the (B*M, H, D) / (B*N, H, D) views: per batch row, its
    padding (the pad_q queries that see no real key, with the key_start padding keys) then its real
    part. Bottom-right causality within the real part is the same as over the whole row."""
    ks = key_start.to(torch.int32).clamp(0, N)
    pad_q = (ks - (N - M)).clamp(0, M) if causal else torch.where(ks >= N, M, 0).to(torch.int32)
    B = ks.shape[0]
    q_lens = torch.stack([pad_q, M - pad_q], 1).view(2 * B)
    k_lens = torch.stack([ks, N - ks], 1).view(2 * B)
    zero = ks.new_zeros(1)
    return (torch.cat([zero, q_lens.cumsum(0)]).to(torch.int32),
            torch.cat([zero, k_lens.cumsum(0)]).to(torch.int32))


def _flash_forward(q, k, v, key_start, causal, scale, window):
    fwd, _ = _flash_ops()
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    window_kw = dict(window_size_left=window - 1, window_size_right=0) if window is not None else {}
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, M, Hq, D), (B, N, Hkv, D)
    if key_start is None:
        out, lse, rng, unused = fwd(qt, kt, vt, None, None, M, N, 0.0, causal, False, scale=scale,
                                    **window_kw)[:4]
        return out.transpose(1, 2), lse, dict(cu=None, rng=rng, unused=unused, window_kw=window_kw)
    cu_q, cu_k = _varlen_offsets(key_start, M, N, causal)
    # max_q only bounds the sequences' lengths; at 1, FlashAttention-2 would fold GQA's query heads
    # into the sequence (its seqlenq_ngroups_swapped path), which assumes one query per sequence
    max_q = max(M, 2)
    out, lse, rng, unused = fwd(qt.reshape(B * M, Hq, D), kt.reshape(B * N, Hkv, D),
                                vt.reshape(B * N, Hkv, D), cu_q, cu_k, max_q, N, 0.0, causal, False,
                                scale=scale, **window_kw)[:4]
    if lse.dim() != 2:
        raise RuntimeError(f"this torch's flash varlen log-sum-exp has shape {tuple(lse.shape)}, not "
                           "(H, total_q); the split route cannot take left padding here: use impl='fused'")
    lse = lse.view(Hq, B, M).transpose(0, 1)  # (B, Hq, M)
    return (out.view(B, M, Hq, D).transpose(1, 2), lse,
            dict(cu=(cu_q, cu_k), max_q=max_q, rng=rng, unused=unused, window_kw=window_kw))


def _flash_backward(do, q, k, v, out, lse, state, causal, scale, window, key_start):
    _, bwd = _flash_ops()
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ot, dout_t = out.transpose(1, 2), do.transpose(1, 2)  # (B, M, Hq, D)
    if state["cu"] is None:
        dq, dk, dv = bwd(dout_t, qt, kt, vt, ot, lse.contiguous(), None, None, M, N, 0.0, causal,
                         state["rng"], state["unused"], scale=scale, **state["window_kw"])
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
    cu_q, cu_k = state["cu"]
    # the op reads the log-sum-exp through its pointer as a contiguous (H, total_q) array; at M = 1 the
    # merged lse's reshape is a strided view, not a copy (wrong dq, dk, dv for B > 1 on an H200)
    dq, dk, dv = bwd(dout_t.reshape(B * M, Hq, D), qt.reshape(B * M, Hq, D), kt.reshape(B * N, Hkv, D),
                     vt.reshape(B * N, Hkv, D), ot.reshape(B * M, Hq, D),
                     lse.transpose(0, 1).reshape(Hq, B * M).contiguous(), cu_q, cu_k, state["max_q"], N, 0.0, causal,
                     state["rng"], state["unused"], scale=scale, **state["window_kw"])
    return (dq.view(B, M, Hq, D).transpose(1, 2), dk.view(B, N, Hkv, D).transpose(1, 2),
            dv.view(B, N, Hkv, D).transpose(1, 2))


SEQUENCE_OPS = {"cpu": (_cpu_forward, _cpu_backward), "flash": (_flash_forward, _flash_backward)}


def sequence_backend(q):
    return "flash" if q.is_cuda else "cpu"


def _empty_rows(key_start, M, N, causal):
    """(B, 1, M, 1) True where a query row sees no sequence key."""
    last_key = torch.arange(M, device=key_start.device) + (N - M) if causal else torch.full(
        (M,), N - 1, device=key_start.device)
    return (last_key[None, :] < key_start[:, None]).view(-1, 1, M, 1)


def split_unsupported(q, prefix_k):
    """Why the split route cannot run these inputs (None when it can)."""
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    if P > MAX_PREFIX:
        return f"the split route takes at most {MAX_PREFIX} prefix keys, got {P}"
    if q.is_cuda:
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"the split route's CUDA op (FlashAttention-2) takes fp16/bf16, got {q.dtype}"
        if torch.cuda.get_device_capability(q.device) < (8, 0):
            return "the split route's CUDA op (FlashAttention-2) needs compute capability >= 8.0"
    elif not _interpreting():
        return "the split route's Triton kernels need CUDA (or TRITON_INTERPRET=1 on the CPU)"
    return None


def _tiles(D):
    """(BLOCK_M, num_warps) for the merge and prefix-backward kernels: memory-bound, one prefix tile."""
    if _interpreting():
        return 32, 1
    return (32, 4) if D == 256 else (64, 4)


def _dot_options(dtype):
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                UPCAST=_interpreting() and dtype == torch.bfloat16)


class _SplitPrefixAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, prefix_k, prefix_v, gate, key_start, causal, scale, window):
        q, k, v, pk, pv, tanh_gate, ks = _setup_forward(ctx, q, k, v, prefix_k, prefix_v, gate, key_start,
                                                        causal, scale, window)
        B, Hq, M, D = q.shape
        Hkv, N = k.shape[1], k.shape[2]
        ctx.backend = sequence_backend(q)
        seq_out, seq_lse, ctx.state = SEQUENCE_OPS[ctx.backend][0](q, k, v, key_start, causal, ctx.scale, window)

        # (B, Hq, M, D) over the (B, M, Hq, D) layout: transformers transposes back to it next
        out = torch.empty(B, M, Hq, D, device=q.device, dtype=q.dtype).transpose(1, 2)
        lse = torch.empty((B, Hq, M), device=q.device, dtype=torch.float32)  # joint: merged; gated: prefix
        block_m, warps = _tiles(D)
        ctx.block_p = max(16, triton.next_power_of_2(max(ctx.P, 1)))
        _merge_fwd_kernel[(triton.cdiv(M, block_m), B * Hq)](
            q, pk, pv, tanh_gate, ks, seq_out, seq_lse, out, lse, lse,
            *q.stride()[:3], *_prefix_strides(pk), *_prefix_strides(pv), *seq_out.stride()[:3],
            *seq_lse.stride(), *out.stride()[:3], Hq, M, N, ctx.P, ctx.scale * LOG2E,
            GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_P=ctx.block_p, CAUSAL=causal,
            IS_GATED=ctx.is_gated, HAS_KEY_START=key_start is not None,
            **_dot_options(q.dtype), num_warps=warps)

        # joint: the op's backward takes the merged (out, lse); gated: its own (O_s, L_s)
        seq_saved = (out, lse) if not ctx.is_gated else (seq_out, seq_lse)
        ctx.save_for_backward(q, k, v, pk, pv, tanh_gate, key_start, *seq_saved, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, pk, pv, tanh_gate, key_start, seq_out, seq_lse, lse = ctx.saved_tensors
        dout = _last_contiguous(dout)
        B, Hq, M, D = q.shape
        Hkv, N = k.shape[1], k.shape[2]
        P = ctx.P
        do_seq = dout
        if ctx.backend == "flash" and key_start is not None:
            # the padding sequences attended padding keys: no gradient may flow from their rows
            do_seq = dout.masked_fill(_empty_rows(key_start, M, N, ctx.causal), 0.0)
        dq, dk, dv = SEQUENCE_OPS[ctx.backend][1](do_seq, q, k, v, seq_out, seq_lse, ctx.state, ctx.causal,
                                                  ctx.scale, ctx.window, key_start)
        dpk = dpv = None
        if P > 0:
            block_m, warps = _tiles(D)
            n_blocks = triton.cdiv(M, block_m)
            # enough programs to fill the GPU, each over whole row blocks; few partials to sum
            blocks_per_program = max(1, n_blocks * B * Hq // 1024)
            n_chunks = triton.cdiv(n_blocks, blocks_per_program)
            dpk_part = torch.empty((n_chunks, B, Hq, P, D), device=q.device, dtype=torch.float32)
            dpv_part = torch.empty_like(dpk_part)
            dot_p = torch.empty((B, Hq, M), device=q.device, dtype=torch.float32) if ctx.is_gated else lse
            _prefix_bwd_kernel[(n_chunks, B * Hq)](
                q, pk, pv, tanh_gate, dout, seq_out, lse, dq, dpk_part, dpv_part, dot_p,
                *q.stride()[:3], *_prefix_strides(pk), *_prefix_strides(pv), *dout.stride()[:3],
                *seq_out.stride()[:3], *dq.stride()[:3], Hq, M, P, blocks_per_program * block_m,
                ctx.scale * LOG2E, ctx.scale, GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_M=block_m,
                BLOCK_P=ctx.block_p, IS_GATED=ctx.is_gated,
                **_dot_options(q.dtype), num_warps=warps)
            # summed in a fixed order (chunks, then the heads of each group; _prefix_grads: the batch if shared)
            dpk = dpk_part.sum(0).view(B, Hkv, Hq // Hkv, P, D).sum(2)  # (B, H_kv, P, D)
            dpv = dpv_part.sum(0).view(B, Hkv, Hq // Hkv, P, D).sum(2)
        dpk, dpv, dg = _prefix_grads(ctx, dpk, dpv, dot_p if P > 0 and ctx.is_gated else None, tanh_gate, q.device)
        return dq, dk, dv, dpk, dpv, dg, None, None, None, None


class _FlashJointConcat(torch.autograd.Function):
    """Joint mode in one FlashAttention-2 call over [prefix; sequence] keys: its bottom-right causality
    over N + P keys lets query i see every prefix key and the sequence keys j <= i + N - M, exactly the
    joint mask, so nothing is left to merge. The price is a copy of k and v with the prefix in front."""

    @staticmethod
    def forward(ctx, q, k, v, prefix_k, prefix_v, causal, scale):
        B, Hq, M, D = q.shape
        N, P = k.shape[2], prefix_k.shape[-2]

        def with_prefix(x, px):  # (B, H_kv, P + N, D)
            return torch.cat([px.expand(B, -1, -1, -1) if px.dim() == 3 else px, x], dim=2)
        kc, vc = with_prefix(k, prefix_k), with_prefix(v, prefix_v)
        fwd, _ = _flash_ops()
        out, lse, rng, unused = fwd(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), None, None, M,
                                    N + P, 0.0, causal, False, scale=scale)[:4]
        ctx.save_for_backward(q, kc, vc, out, lse, rng, unused)
        ctx.causal, ctx.scale, ctx.P, ctx.is_gated = causal, scale, P, False
        ctx.prefix_shape, ctx.prefix_dtype = prefix_k.shape, prefix_k.dtype
        return out.transpose(1, 2)  # (B, Hq, M, D) over FlashAttention's (B, M, Hq, D)

    @staticmethod
    def backward(ctx, dout):
        q, kc, vc, out, lse, rng, unused = ctx.saved_tensors
        _, bwd = _flash_ops()
        dq, dkc, dvc = bwd(_last_contiguous(dout).transpose(1, 2), q.transpose(1, 2), kc.transpose(1, 2),
                           vc.transpose(1, 2), out, lse, None, None, q.shape[2], kc.shape[2], 0.0, ctx.causal, rng,
                           unused, scale=ctx.scale)
        dkc, dvc = dkc.transpose(1, 2), dvc.transpose(1, 2)  # (B, H_kv, P + N, D)
        P = ctx.P
        # a shared prefix: summed over the batch in fp32, in a fixed order
        dpk, dpv, _ = _prefix_grads(ctx, dkc[:, :, :P].float(), dvc[:, :, :P].float(), None, None, dq.device)
        return dq.transpose(1, 2), dkc[:, :, P:], dvc[:, :, P:], dpk, dpv, None, None


def split_prefix_attention(q, k, v, prefix_k=None, prefix_v=None, gate=None, key_start=None, causal=True,
                           scale=None, window=None):
    """The split route behind prefix_attention(impl="split"); inputs already checked there. Joint mode
    on CUDA without padding or window goes in one FlashAttention call over [prefix; k] where copying k
    and v moves fewer bytes than the merge would (4 N H_kv D against 3 M H_q D forward, about 8 with
    the prefix backward): training and prefill, not decoding."""
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    trains = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, prefix_k, prefix_v))
    if (gate is None and P > 0 and key_start is None and window is None and sequence_backend(q) == "flash"
            and 4 * N * Hkv < (8 if trains else 3) * M * Hq):
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        return _FlashJointConcat.apply(_last_contiguous(q), _last_contiguous(k), _last_contiguous(v),
                                       _last_contiguous(prefix_k), _last_contiguous(prefix_v), bool(causal), scale)
    return _SplitPrefixAttention.apply(q, k, v, prefix_k, prefix_v, gate, key_start, bool(causal), scale,
                                       window)
