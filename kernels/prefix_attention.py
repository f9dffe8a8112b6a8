"""Fused prefix attention in Triton: prefix tuning (joint softmax) and LLaMA-Adapter (gated prefix).

One family of FlashAttention-2 kernels (Dao, 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning"; Dao et al., 2022, "FlashAttention") for attention over learned
prefix keys/values plus the sequence's own keys. The score matrix is never materialised: each program
keeps an online-softmax state (running max, running sum, accumulator) in registers.

What changed from the Triton fused-attention tutorial (06-fused-attention.py):
  * Prefix keys pk, pv of shape (H_kv, P, D) (shared by the batch, stride 0 over B) or (B, H_kv, P, D)
    are visited before the sequence keys. They are never masked by causality or padding.
  * Joint mode (prefix tuning, Li & Liang 2021): one softmax over the P prefix keys and the sequence
    keys. Gated mode (LLaMA-Adapter, Zhang et al. 2023): two softmax states in the same pass,
    out = softmax_causal(q k^T s) v + tanh(g[h]) * softmax(q pk^T s) pv.
  * Grouped-query attention by index (query head h reads key head h // GROUP), never by copying k/v.
  * Bottom-right aligned causality so decoding with a KV cache works: query i sees sequence keys
    j <= i + N - M. Left padding: keys j < key_start[b] are masked; a row with nothing to attend
    to gives zeros (its log-sum-exp is stored as +inf so the backward gives zero probabilities).
  * Optional sliding window (Gemma 3, Mistral; Beltagy et al., 2020, "Longformer"): query i also
    needs i + N - M - j < window. Key blocks wholly outside the window are skipped, in the forward
    and both backward kernels; prefix keys are never windowed.
  * Deterministic backward without atomics: one kernel over key blocks writes dk/dv (looping over
    the query heads of its group) and, for extra programs placed on the prefix keys, per-(b, h_kv)
    fp32 partials of dpk/dpv that torch sums over the batch; one kernel over query blocks writes dq.
    The gate gradient is a torch sum of per-row partials written by the preprocessing kernel.
  * Each key loop is split into masked edge blocks and unmasked interior blocks, so the interior
    pays for no mask arithmetic.

Limits: head dims 16, 32, 64, 128 and 256 (Gemma 3's); fp16, bf16, fp32 (fp32 dots in IEEE precision,
meant for the CPU interpreter and tests, not speed); N >= M >= 1; a window only with causal masking;
the last stride of every tensor must be 1 (the launcher copies otherwise). The CPU runs only under
TRITON_INTERPRET=1.
"""
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in base-2 units so the kernels can use exp2


@triton.jit
def _seq_bounds(start_m, M, N, key_start, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, IS_WINDOWED: tl.constexpr):
    """Key-block ranges for the query block at start_m: masked [lo, mid_lo), free [mid_lo, mid_hi),
    masked [mid_hi, hi). Blocks wholly before key_start, before the window of the block's first row,
    or after the causal diagonal are skipped."""
    if CAUSAL:
        hi = tl.minimum(N, start_m + BLOCK_M + N - M)
        # a key block needs no mask when even the first row of the query block sees all of it
        mid_hi = (start_m + N - M + 1) // BLOCK_N * BLOCK_N
        mid_hi = tl.minimum(mid_hi, N // BLOCK_N * BLOCK_N)
    else:
        hi = N
        mid_hi = N // BLOCK_N * BLOCK_N
    hi = tl.cdiv(hi, BLOCK_N) * BLOCK_N
    first = key_start  # the first key any row of the block sees
    free = key_start  # the first key from which on every row sees every (causally visible) key
    if IS_WINDOWED:  # row i sees keys j > i + N - M - window
        first = tl.maximum(first, start_m + N - M - window + 1)
        free = tl.maximum(free, start_m + BLOCK_M + N - M - window)
    mid_lo = tl.minimum(tl.cdiv(free, BLOCK_N) * BLOCK_N, hi)
    lo = tl.minimum(first // BLOCK_N * BLOCK_N, mid_lo)
    mid_hi = tl.maximum(mid_hi, mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _visible(offs_m, offs_n, M, N, key_start, window, CAUSAL: tl.constexpr, IS_WINDOWED: tl.constexpr):
    """True where query offs_m sees sequence key offs_n: left padding, causality and the window (the
    bound N is the caller's). Indices come broadcastable, (BLOCK_M, 1) and (1, BLOCK_N) or transposed."""
    valid = offs_n >= key_start
    if CAUSAL:
        valid = valid & (offs_n <= offs_m + (N - M))
    if IS_WINDOWED:
        valid = valid & (offs_n > offs_m + (N - M) - window)
    return valid


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, offs_m, offs_d,
               M, N, key_start, window, qk_scale, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               IS_PREFIX: tl.constexpr, CAUSAL: tl.constexpr, IS_WINDOWED: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Online softmax over key blocks [lo, hi) of K/V (sequence or prefix); N bounds the keys."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None]  # (D, BLOCK_N)
        v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :]  # (BLOCK_N, D)
        if MASK:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < N, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < N, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        if MASK:
            valid = offs_n[None, :] < N
            if not IS_PREFIX:
                valid = valid & _visible(offs_m[:, None], offs_n[None, :], M, N, key_start, window,
                                         CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED)
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen only masked keys keeps max -inf; shift by 0 so exp2 gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _finish(acc, l_i, m_i):
    """Normalise; empty rows give 0 output and +inf log-sum-exp (so the backward sees p = 0)."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    return out, lse


@triton.jit
def _fwd_kernel(Q, K, V, PK, PV, TanhGate, KeyStart, Out, LSE, LSEP,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_pkb, stride_pkh, stride_pkn,
                stride_pvb, stride_pvh, stride_pvn, stride_ob, stride_oh, stride_om,
                H, M, N, P, window, qk_scale,
                GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, CAUSAL: tl.constexpr,
                IS_GATED: tl.constexpr, HAS_PREFIX: tl.constexpr, HAS_KEY_START: tl.constexpr,
                IS_WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # the last query blocks see the most keys under causal masking: schedule them first
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < M, other=0.0)
    key_start = tl.load(KeyStart + b).to(tl.int32) if HAS_KEY_START else 0

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if HAS_PREFIX:
        PKh = PK + b * stride_pkb + hk * stride_pkh
        PVh = PV + b * stride_pvb + hk * stride_pvh
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, PKh, PVh, stride_pkn, stride_pvn, 0, P, offs_m, offs_d, M,
                                   P, 0, 0, qk_scale, BLOCK_N=BLOCK_P, MASK=True, IS_PREFIX=True,
                                   CAUSAL=CAUSAL, IS_WINDOWED=False, DOT_PRECISION=DOT_PRECISION)
    if IS_GATED:
        # the prefix softmax is finished; the sequence keys start a second, separate state
        out_p, lse_p = _finish(acc, l_i, m_i)
        tl.store(LSEP + pid_bh * M + offs_m, lse_p, mask=offs_m < M)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    Kh = K + b * stride_kb + hk * stride_kh
    Vh = V + b * stride_vb + hk * stride_vh
    lo, mid_lo, mid_hi, hi = _seq_bounds(start_m, M, N, key_start, window, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                         CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, Kh, Vh, stride_kn, stride_vn, lo, mid_lo, offs_m, offs_d, M, N,
                               key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=True, IS_PREFIX=False,
                               CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, Kh, Vh, stride_kn, stride_vn, mid_lo, mid_hi, offs_m, offs_d, M,
                               N, key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=False, IS_PREFIX=False,
                               CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, Kh, Vh, stride_kn, stride_vn, mid_hi, hi, offs_m, offs_d, M, N,
                               key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=True, IS_PREFIX=False,
                               CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    out, lse = _finish(acc, l_i, m_i)
    if IS_GATED:
        out = out + tl.load(TanhGate + h) * out_p
    tl.store(LSE + pid_bh * M + offs_m, lse, mask=offs_m < M)
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < M)


@triton.jit
def _bwd_preprocess(Q, PK, PV, TanhGate, Out, DO, LSEP, Delta, DotP,
                    stride_qb, stride_qh, stride_qm, stride_pkb, stride_pkh, stride_pkn,
                    stride_pvb, stride_pvh, stride_pvn, stride_ob, stride_oh, stride_om,
                    stride_dob, stride_doh, stride_dom, H, M, P, qk_scale,
                    GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_P: tl.constexpr, IS_GATED: tl.constexpr, HAS_PREFIX: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Delta = rowsum(dO * O) for the softmax backward. In gated mode the output is
    O_seq + t * O_prefix with separate softmaxes, so O_prefix is recomputed (P is small) and
    DotP = rowsum(dO * O_prefix) is written: delta_seq = Delta, delta_prefix = t * DotP, and
    dgate = (1 - t^2) * sum(DotP)."""
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < M
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if IS_GATED:
        dot_p = tl.zeros([BLOCK_M], dtype=tl.float32)
        if HAS_PREFIX:
            hk = (h // GROUP).to(tl.int64)
            q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                        mask=row_ok[:, None], other=0.0)
            lse_p = tl.load(LSEP + pid_bh * M + offs_m, mask=row_ok, other=float("inf"))
            acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
            for start_p in range(0, P, BLOCK_P):
                offs_p = start_p + tl.arange(0, BLOCK_P)
                kT = tl.load(PK + b * stride_pkb + hk * stride_pkh + offs_p[None, :] * stride_pkn
                             + offs_d[:, None], mask=offs_p[None, :] < P, other=0.0)  # (D, BLOCK_P)
                v = tl.load(PV + b * stride_pvb + hk * stride_pvh + offs_p[:, None] * stride_pvn
                            + offs_d[None, :], mask=offs_p[:, None] < P, other=0.0)  # (BLOCK_P, D)
                s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
                p = tl.where(offs_p[None, :] < P, tl.math.exp2(s - lse_p[:, None]), 0.0)
                acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            dot_p = tl.sum(acc * do, 1)
        delta = delta - tl.load(TanhGate + h) * dot_p
        tl.store(DotP + pid_bh * M + offs_m, dot_p, mask=row_ok)
    tl.store(Delta + pid_bh * M + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, d_scale, K, V, stride_kn, stride_vn, lo, hi, offs_m,
                  offs_d, M, N, key_start, window, qk_scale, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                  IS_PREFIX: tl.constexpr, CAUSAL: tl.constexpr, IS_WINDOWED: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """dq += dS K over key blocks [lo, hi); d_scale is tanh(g) for the gated prefix, else 1."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None]  # (D, BLOCK_N)
        vT_ptrs = V + offs_n[None, :] * stride_vn + offs_d[:, None]  # (D, BLOCK_N)
        if MASK:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < N, other=0.0)
            vT = tl.load(vT_ptrs, mask=offs_n[None, :] < N, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            vT = tl.load(vT_ptrs)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASK:
            valid = offs_n[None, :] < N
            if not IS_PREFIX:
                valid = valid & _visible(offs_m[:, None], offs_n[None, :], M, N, key_start, window,
                                         CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION) * d_scale
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, PK, PV, TanhGate, KeyStart, DO, LSE, LSEP, Delta, DotP, DQ,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_pkb, stride_pkh, stride_pkn,
                   stride_pvb, stride_pvh, stride_pvn, stride_dob, stride_doh, stride_dom,
                   stride_dqb, stride_dqh, stride_dqm, H, M, N, P, window, qk_scale, sm_scale,
                   GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, CAUSAL: tl.constexpr,
                   IS_GATED: tl.constexpr, HAS_PREFIX: tl.constexpr, HAS_KEY_START: tl.constexpr,
                   IS_WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # longest blocks first
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < M
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + pid_bh * M + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + pid_bh * M + offs_m, mask=row_ok, other=0.0)
    key_start = tl.load(KeyStart + b).to(tl.int32) if HAS_KEY_START else 0

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if HAS_PREFIX:
        PKh = PK + b * stride_pkb + hk * stride_pkh
        PVh = PV + b * stride_pvb + hk * stride_pvh
        if IS_GATED:  # the prefix's own softmax, which sees dO scaled by t = tanh(g)
            t = tl.load(TanhGate + h)
            lse_p = tl.load(LSEP + pid_bh * M + offs_m, mask=row_ok, other=float("inf"))
            delta_p = t * tl.load(DotP + pid_bh * M + offs_m, mask=row_ok, other=0.0)
        else:  # the joint softmax
            t = 1.0
            lse_p = lse
            delta_p = delta
        dq = _bwd_dq_inner(dq, q, do, lse_p, delta_p, t, PKh, PVh, stride_pkn, stride_pvn, 0, P, offs_m, offs_d,
                           M, P, 0, 0, qk_scale, BLOCK_N=BLOCK_P, MASK=True, IS_PREFIX=True, CAUSAL=CAUSAL,
                           IS_WINDOWED=False, DOT_PRECISION=DOT_PRECISION)
    Kh = K + b * stride_kb + hk * stride_kh
    Vh = V + b * stride_vb + hk * stride_vh
    lo, mid_lo, mid_hi, hi = _seq_bounds(start_m, M, N, key_start, window, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                         CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, 1.0, Kh, Vh, stride_kn, stride_vn, lo, mid_lo, offs_m, offs_d, M,
                       N, key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=True, IS_PREFIX=False,
                       CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, 1.0, Kh, Vh, stride_kn, stride_vn, mid_lo, mid_hi, offs_m, offs_d,
                       M, N, key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=False, IS_PREFIX=False,
                       CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, 1.0, Kh, Vh, stride_kn, stride_vn, mid_hi, hi, offs_m, offs_d, M,
                       N, key_start, window, qk_scale, BLOCK_N=BLOCK_N, MASK=True, IS_PREFIX=False,
                       CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_kv_inner(dk, dv, k, v, Q, DO, LSEh, Deltah, delta_scale, d_scale, stride_qm, stride_dom,
                  lo, hi, offs_n, offs_d, M, N, key_start, window, qk_scale, BLOCK_M: tl.constexpr,
                  MASK: tl.constexpr, CAUSAL: tl.constexpr, IS_WINDOWED: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """dv += P^T dO, dk += dS^T Q over query blocks [lo, hi) of one query head, in transposed form
    (keys on rows) as in the tutorial. Keys past N need no mask: they only reach dk/dv rows that are
    never stored. delta = delta_scale * Deltah (tanh(g) * DotP for the gated prefix)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < M
        qT = tl.load(Q + offs_m[None, :] * stride_qm + offs_d[:, None], mask=row_ok[None, :],
                     other=0.0)  # (D, BLOCK_M)
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None],
                     other=0.0)  # (BLOCK_M, D)
        lse = tl.load(LSEh + offs_m, mask=row_ok, other=float("inf"))
        delta = delta_scale * tl.load(Deltah + offs_m, mask=row_ok, other=0.0)
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(sT - lse[None, :])
        if MASK:
            valid = _visible(offs_m[None, :], offs_n[:, None], M, N, key_start, window, CAUSAL=CAUSAL,
                             IS_WINDOWED=IS_WINDOWED)
            pT = tl.where(valid, pT, 0.0)
        dv += tl.dot((pT * d_scale).to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION) * d_scale
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, PK, PV, TanhGate, KeyStart, DO, LSE, LSEP, Delta, DotP,
                     DK, DV, DPK, DPV,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_pkb, stride_pkh, stride_pkn,
                     stride_pvb, stride_pvh, stride_pvn, stride_dob, stride_doh, stride_dom,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     H_KV, M, N, P, n_prefix_blocks, window, qk_scale, sm_scale,
                     GROUP, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, IS_GATED: tl.constexpr,
                     HAS_KEY_START: tl.constexpr, IS_WINDOWED: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
    """Grid (n_prefix_blocks + cdiv(N, BLOCK_N), B * H_kv). The prefix programs come first because
    each visits every query of the group (the longest programs should start first); they write fp32
    partials DPK/DPV of shape (B, H_kv, P, D)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = pid_bh % H_KV
    offs_d = tl.arange(0, HEAD_DIM)
    key_start = tl.load(KeyStart + b).to(tl.int32) if HAS_KEY_START else 0
    m_end = tl.cdiv(M, BLOCK_M) * BLOCK_M
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if pid_n < n_prefix_blocks:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = offs_n[:, None] < P
        k = tl.load(PK + b * stride_pkb + hk * stride_pkh + offs_n[:, None] * stride_pkn + offs_d[None, :],
                    mask=key_ok, other=0.0)  # (BLOCK_N, D)
        v = tl.load(PV + b * stride_pvb + hk * stride_pvh + offs_n[:, None] * stride_pvn + offs_d[None, :],
                    mask=key_ok, other=0.0)
        for g in range(GROUP):
            h = hk * GROUP + g
            bh = b * (H_KV * GROUP) + h
            Qh = Q + b * stride_qb + h * stride_qh
            DOh = DO + b * stride_dob + h * stride_doh
            if IS_GATED:  # the prefix's own softmax, which sees dO scaled by t = tanh(g)
                t = tl.load(TanhGate + h)
                LSEh, Deltah = LSEP + bh * M, DotP + bh * M
            else:  # the joint softmax
                t, LSEh, Deltah = 1.0, LSE + bh * M, Delta + bh * M
            dk, dv = _bwd_kv_inner(dk, dv, k, v, Qh, DOh, LSEh, Deltah, t, t, stride_qm, stride_dom, 0, m_end,
                                   offs_n, offs_d, M, N, 0, 0, qk_scale, BLOCK_M=BLOCK_M, MASK=False,
                                   CAUSAL=CAUSAL, IS_WINDOWED=False, DOT_PRECISION=DOT_PRECISION)
        # partials are contiguous fp32 (B, H_kv, P, D)
        part = (b * H_KV + hk) * P * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DPK + part, dk * sm_scale, mask=key_ok)
        tl.store(DPV + part, dv, mask=key_ok)
    else:
        start_n = (pid_n - n_prefix_blocks) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n[:, None] < N
        k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=key_ok, other=0.0)
        v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=key_ok, other=0.0)
        if CAUSAL:
            # first query that sees key start_n, and first that sees the whole key block
            lo = tl.maximum(start_n - (N - M), 0) // BLOCK_M * BLOCK_M
            mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - (N - M), 0), BLOCK_M) * BLOCK_M
        else:
            lo = 0
            mid = 0
        hi = m_end
        free_hi = m_end
        if IS_WINDOWED:
            # query i sees key j while i < j + window - (N - M): the last rows that see the block's
            # last key, and the last whole query block whose rows all still see its first key
            hi = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 + window - (N - M), 0), BLOCK_M)
                            * BLOCK_M, m_end)
            free_hi = tl.maximum(start_n + window - (N - M), 0) // BLOCK_M * BLOCK_M
        if start_n < key_start:  # the block holds padding: mask every query block
            mid = m_end
        if start_n + BLOCK_N <= key_start:  # only padding: nothing to do
            lo = m_end
        # query blocks: masked [lo, mid) (causal edge), free [mid, free_hi), masked [free_hi, hi)
        mid = tl.minimum(tl.maximum(mid, lo), hi)
        free_hi = tl.minimum(tl.maximum(free_hi, mid), hi)
        for g in range(GROUP):
            h = hk * GROUP + g
            bh = b * (H_KV * GROUP) + h
            Qh = Q + b * stride_qb + h * stride_qh
            DOh = DO + b * stride_dob + h * stride_doh
            LSEh, Deltah = LSE + bh * M, Delta + bh * M
            dk, dv = _bwd_kv_inner(dk, dv, k, v, Qh, DOh, LSEh, Deltah, 1.0, 1.0, stride_qm, stride_dom, lo, mid,
                                   offs_n, offs_d, M, N, key_start, window, qk_scale, BLOCK_M=BLOCK_M, MASK=True,
                                   CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
            dk, dv = _bwd_kv_inner(dk, dv, k, v, Qh, DOh, LSEh, Deltah, 1.0, 1.0, stride_qm, stride_dom, mid,
                                   free_hi, offs_n, offs_d, M, N, key_start, window, qk_scale, BLOCK_M=BLOCK_M,
                                   MASK=False, CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
            dk, dv = _bwd_kv_inner(dk, dv, k, v, Qh, DOh, LSEh, Deltah, 1.0, 1.0, stride_qm, stride_dom, free_hi,
                                   hi, offs_n, offs_d, M, N, key_start, window, qk_scale, BLOCK_M=BLOCK_M,
                                   MASK=True, CAUSAL=CAUSAL, IS_WINDOWED=IS_WINDOWED, DOT_PRECISION=DOT_PRECISION)
        dk_ptrs = DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
        dv_ptrs = DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
        tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=key_ok)


# ----------------------------------------------------------------------------------------------
# launcher and autograd Function

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEAD_DIMS = (16, 32, 64, 128, 256)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _last_contiguous(x):
    # the kernels index the head dimension with unit stride; any other layout is copied once
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _check_inputs(q, k, v, prefix_k, prefix_v, gate, key_start, causal, window):
    """Raise ValueError naming the argument for anything a caller could get wrong."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor (B, H, seq, D), got "
                             f"{getattr(x, 'shape', type(x))}")
    B, Hq, M, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k and v must both be (B={B}, H_kv, N, D={D}), got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    Hkv, N = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q's head count {Hq} must be a multiple of k/v's head count {Hkv}")
    if M < 1 or N < M:
        raise ValueError(f"need 1 <= M <= N (queries M={M}, keys N={N}); queries are the last M "
                         "positions of the key sequence")
    if D not in _HEAD_DIMS:
        raise ValueError(f"head dim D={D} not supported; accepted: {_HEAD_DIMS}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; accepted: {_DTYPES}")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and _interpreting()):
        raise ValueError(f"q is on {q.device}; the kernels need a CUDA tensor (CPU tensors only "
                         "with TRITON_INTERPRET=1)")
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k and prefix_v must both be given or both be None")
    if gate is not None and prefix_k is None:
        raise ValueError("gated mode (gate given) needs prefix_k and prefix_v")
    named = [("k", k), ("v", v)]
    if prefix_k is not None:
        for name, x in (("prefix_k", prefix_k), ("prefix_v", prefix_v)):
            if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
                raise ValueError(f"{name} must be (H_kv, P, D) or (B, H_kv, P, D), got "
                                 f"{getattr(x, 'shape', type(x))}")
        if prefix_k.shape != prefix_v.shape:
            raise ValueError(f"prefix_k {tuple(prefix_k.shape)} and prefix_v "
                             f"{tuple(prefix_v.shape)} must have the same shape")
        ok = (prefix_k.shape[-3] == Hkv and prefix_k.shape[-1] == D
              and (prefix_k.dim() == 3 or prefix_k.shape[0] == B))
        if not ok:
            raise ValueError(f"prefix_k/prefix_v must be ({Hkv}, P, {D}) or ({B}, {Hkv}, P, {D}), "
                             f"got {tuple(prefix_k.shape)}")
        named += [("prefix_k", prefix_k), ("prefix_v", prefix_v)]
    for name, x in named:
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; all must match")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if gate is not None:
        if not isinstance(gate, torch.Tensor) or gate.shape != (Hq,) or not gate.is_floating_point():
            raise ValueError(f"gate must be a float tensor of shape ({Hq},) (one raw gate per query "
                             f"head), got {getattr(gate, 'shape', type(gate))}")
        if gate.device != q.device:
            raise ValueError(f"gate is on {gate.device} but q is on {q.device}")
    if key_start is not None:
        if (not isinstance(key_start, torch.Tensor) or key_start.shape != (B,)
                or key_start.dtype not in (torch.int32, torch.int64)):
            raise ValueError(f"key_start must be an int32/int64 tensor of shape ({B},), got "
                             f"{getattr(key_start, 'dtype', type(key_start))} "
                             f"{getattr(key_start, 'shape', '')}")
        if key_start.device != q.device:
            raise ValueError(f"key_start is on {key_start.device} but q is on {q.device}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (keys a query sees, itself included) or "
                             f"None, got {window!r}")
        if not causal:
            raise ValueError("window needs causal=True (a sliding window looks back from each query)")


def _blocks(D, dtype, tiles=None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for forward, dq, dk/dv: fixed choices per head dim
    (from benchmarks/bench_attention.py --sweep) rather than autotuning, to keep compile time down and
    runs reproducible. tiles, {"fwd" | "dq" | "dkdv": config}, replaces those of the kernels it names."""
    if _interpreting():  # numpy executes whole tiles; small tiles still exercise the edge logic
        defaults = (32, 32, 1, 1), (32, 32, 1, 1), (32, 32, 1, 1)
    elif D == 256:
        # Gemma 3: the (BLOCK_M, 256) accumulator needs small tiles and 8 warps to stay in registers;
        # untuned (no sweep has covered D = 256 yet; bench_attention.py --sweep --sweep-dims 256 does)
        defaults = (64, 32, 8, 1), (64, 32, 8, 1), (32, 32, 8, 1)
    elif dtype == torch.float32 or D <= 32:
        # fp32 is for tests only; small head dims crashed ptxas (3.6) in the dq kernel with the
        # pipelined large-tile configs, so tiny test models get small unpipelined tiles
        defaults = (64, 32, 4, 1), (64, 32, 4, 1), (32, 64, 4, 1)
    elif D == 128:  # fastest of a small sweep on an H100 (bf16, N=4096, joint; benchmarks/RESULTS.md)
        defaults = (128, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2)
    else:
        defaults = (128, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 3)
    tiles = tiles or {}
    return tuple(tiles.get(kind, default) for kind, default in zip(("fwd", "dq", "dkdv"), defaults))


def _prefix_strides(x):
    # shared prefixes (H_kv, P, D) are read with batch stride 0
    return (0,) + tuple(x.stride()[:2]) if x.dim() == 3 else tuple(x.stride()[:3])


def _setup_forward(ctx, q, k, v, prefix_k, prefix_v, gate, key_start, causal, scale, window):
    """Both routes' forward start. Sets on ctx what their backwards read (causal, scale, window, P,
    is_gated, and for _prefix_grads the prefix's shape and dtype and the gate's dtype) and returns
    unit-stride q, k, v, pk, pv (k, v where there are no prefix keys: any valid pointer, the prefix loops
    run zero times), tanh(gate) in fp32 and the key starts (placeholders where there are none)."""
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    ctx.P = 0 if prefix_k is None else prefix_k.shape[-2]
    pk, pv = (_last_contiguous(prefix_k), _last_contiguous(prefix_v)) if ctx.P > 0 else (k, v)
    ctx.is_gated = gate is not None
    tanh_gate = gate.detach().float().tanh().contiguous() if ctx.is_gated else q.new_empty(1, dtype=torch.float32)
    ks = key_start.contiguous() if key_start is not None else q.new_zeros(1, dtype=torch.int32)
    ctx.causal, ctx.window = causal, window
    ctx.scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    ctx.prefix_shape = None if prefix_k is None else prefix_k.shape
    ctx.prefix_dtype = None if prefix_k is None else prefix_k.dtype
    ctx.gate_dtype = None if gate is None else gate.dtype
    return q, k, v, pk, pv, tanh_gate, ks


class _PrefixAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, prefix_k, prefix_v, gate, key_start, causal, scale, window, tiles):
        q, k, v, pk, pv, tanh_gate, ks = _setup_forward(ctx, q, k, v, prefix_k, prefix_v, gate, key_start,
                                                        causal, scale, window)
        B, Hq, M, D = q.shape
        Hkv, N = k.shape[1], k.shape[2]
        ctx.has_key_start = key_start is not None
        ctx.precision = "ieee" if q.dtype == torch.float32 else "tf32"
        ctx.tiles = _blocks(D, q.dtype, tiles)  # the backward launches with the same
        ctx.block_p = min(64, max(16, triton.next_power_of_2(max(ctx.P, 1))))
        (bm, bn, warps, stages), _, _ = ctx.tiles

        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty((B, Hq, M), device=q.device, dtype=torch.float32)
        lse_p = torch.empty((B, Hq, M), device=q.device, dtype=torch.float32) if ctx.is_gated else lse
        pk_s, pv_s = _prefix_strides(pk), _prefix_strides(pv)
        grid = (triton.cdiv(M, bm), B * Hq)
        _fwd_kernel[grid](
            q, k, v, pk, pv, tanh_gate, ks, out, lse, lse_p,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *pk_s, *pv_s, *out.stride()[:3],
            Hq, M, N, ctx.P, window or 0, ctx.scale * LOG2E,
            GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, BLOCK_P=ctx.block_p, CAUSAL=causal,
            IS_GATED=ctx.is_gated, HAS_PREFIX=ctx.P > 0, HAS_KEY_START=ctx.has_key_start,
            IS_WINDOWED=window is not None, DOT_PRECISION=ctx.precision, num_warps=warps,
            num_stages=stages)

        ctx.save_for_backward(q, k, v, pk, pv, tanh_gate, ks, out, lse, lse_p)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, pk, pv, tanh_gate, ks, out, lse, lse_p = ctx.saved_tensors
        dout = _last_contiguous(dout)
        B, Hq, M, D = q.shape
        Hkv, N = k.shape[1], k.shape[2]
        P, has_prefix, is_gated = ctx.P, ctx.P > 0, ctx.is_gated
        _, (bm_q, bn_q, w_q, s_q), (bm_k, bn_k, w_k, s_k) = ctx.tiles
        pk_s, pv_s = _prefix_strides(pk), _prefix_strides(pv)
        qk_scale = ctx.scale * LOG2E
        common = dict(GROUP=Hq // Hkv, HEAD_DIM=D, IS_GATED=is_gated, DOT_PRECISION=ctx.precision)

        delta = torch.empty_like(lse)
        dot_p = torch.empty_like(lse) if is_gated else delta
        _bwd_preprocess[(triton.cdiv(M, bm_q), B * Hq)](
            q, pk, pv, tanh_gate, out, dout, lse_p, delta, dot_p,
            *q.stride()[:3], *pk_s, *pv_s, *out.stride()[:3], *dout.stride()[:3], Hq, M, P, qk_scale,
            BLOCK_M=bm_q, BLOCK_P=ctx.block_p, HAS_PREFIX=has_prefix, **common)

        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        _bwd_dq_kernel[(triton.cdiv(M, bm_q), B * Hq)](
            q, k, v, pk, pv, tanh_gate, ks, dout, lse, lse_p, delta, dot_p, dq,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *pk_s, *pv_s, *dout.stride()[:3],
            *dq.stride()[:3], Hq, M, N, P, ctx.window or 0, qk_scale, ctx.scale,
            BLOCK_M=bm_q, BLOCK_N=bn_q, BLOCK_P=ctx.block_p, CAUSAL=ctx.causal,
            HAS_PREFIX=has_prefix, HAS_KEY_START=ctx.has_key_start, IS_WINDOWED=ctx.window is not None,
            num_warps=w_q, num_stages=s_q, **common)

        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
        n_pblocks = triton.cdiv(P, bn_k)
        dpk_part = torch.empty((B, Hkv, P, D), device=q.device, dtype=torch.float32)  # (B, H_kv, P, D)
        dpv_part = torch.empty_like(dpk_part)
        _bwd_dkdv_kernel[(n_pblocks + triton.cdiv(N, bn_k), B * Hkv)](
            q, k, v, pk, pv, tanh_gate, ks, dout, lse, lse_p, delta, dot_p, dk, dv, dpk_part, dpv_part,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *pk_s, *pv_s, *dout.stride()[:3],
            *dk.stride()[:3], *dv.stride()[:3], Hkv, M, N, P, n_pblocks, ctx.window or 0, qk_scale,
            ctx.scale, BLOCK_M=bm_k, BLOCK_N=bn_k, CAUSAL=ctx.causal, HAS_KEY_START=ctx.has_key_start,
            IS_WINDOWED=ctx.window is not None, num_warps=w_k, num_stages=s_k, **common)

        dpk, dpv, dg = _prefix_grads(ctx, dpk_part, dpv_part, dot_p if is_gated else None, tanh_gate, q.device)
        return dq, dk, dv, dpk, dpv, dg, None, None, None, None, None


def _prefix_grads(ctx, dpk, dpv, dot_p, tanh_gate, device):
    """Prefix and gate gradients from a backward's fp32 sums, for every route.

    Args:
        ctx: holds prefix_shape, prefix_dtype, gate_dtype and is_gated (_setup_forward sets them).
        dpk, dpv: (B, H_kv, P, D) fp32 sums per sequence, or None where there are no prefix keys.
        dot_p: (B, Hq, M) per-row dO . O_prefix (gated mode), or None where there are no prefix keys.
    Returns (dpk, dpv, dgate), each None where its input was None.
    """
    dpk_out = dpv_out = dg = None
    if ctx.prefix_shape is not None:
        if dpk is None:  # no prefix keys: nothing flowed to them
            dpk = dpv = torch.zeros(ctx.prefix_shape, device=device, dtype=torch.float32)
        elif len(ctx.prefix_shape) == 3:  # shared by the batch: summed over it in a fixed order
            dpk, dpv = dpk.sum(0), dpv.sum(0)  # (H_kv, P, D)
        dpk_out = dpk.to(ctx.prefix_dtype).reshape(ctx.prefix_shape)
        dpv_out = dpv.to(ctx.prefix_dtype).reshape(ctx.prefix_shape)
    if ctx.is_gated:
        # out = O_seq + tanh(g) O_prefix, so dL/dg = (1 - tanh(g)^2) * sum_{b, m} dO . O_prefix
        dg = torch.zeros_like(tanh_gate) if dot_p is None else (1.0 - tanh_gate * tanh_gate) * dot_p.sum(dim=(0, 2))
        dg = dg.to(ctx.gate_dtype)  # (Hq,)
    return dpk_out, dpv_out, dg


IMPLS = ("auto", "fused", "split")


def split_is_faster(M, D):
    """Where "auto" takes the split route, from an H200 run (bf16, P = 10, GQA 4; benchmarks/RESULTS.md,
    2026-12-04; ratios are causal SDPA's time over ours): decoding, one query, at head dim 128 (joint
    0.30-0.68 against the fused kernel's 0.19-0.28) and 256 (0.31-0.94 against 0.15-0.17). The fused
    kernel was faster for every forward with many queries and for training at D = 64 and 128. Training
    at D = 256 from 4096 tokens was faster split (forward+backward 0.59-0.63 against 0.51-0.52) but
    stays fused: the split backward accumulates dq with atomics, so runs would stop being
    bit-identical (impl="split" takes it on purpose)."""
    return M == 1 and D >= 128


def choose_impl(q, prefix_k, impl=None):
    """The route prefix_attention takes: impl, else $XPREFIX_ATTN_IMPL, else "auto".

    "auto" takes the split route on CUDA where it can run (fp16/bf16, compute capability >= 8.0,
    P <= 64) and split_is_faster says it was measured faster; the fused kernel everywhere else, the
    CPU interpreter included. An explicit "split" that cannot run is a ValueError.
    """
    from kernels.split_attention import split_unsupported  # imported here: it imports this module
    impl = impl or os.environ.get("XPREFIX_ATTN_IMPL") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "fused":
        return impl
    why = split_unsupported(q, prefix_k)
    if impl == "split":
        if why:
            raise ValueError(f"impl='split': {why}; use impl='fused' or 'auto'")
        return impl
    if why is None and q.is_cuda and split_is_faster(q.shape[-2], q.shape[-1]):
        return "split"
    return "fused"


def prefix_attention(q, k, v, prefix_k=None, prefix_v=None, gate=None, *, causal=True, scale=None,
                     key_start=None, window=None, impl=None, tiles=None):
    """Attention of q over learned prefix keys/values and the sequence's keys.

    Two routes compute the same function (kernels/split_attention.py says how): "fused", one Triton
    kernel for prefix and sequence keys, and "split", the sequence keys through PyTorch's fused
    attention op and the prefix and the merge through Triton. choose_impl() picks between them.

    Args:
        q: (B, Hq, M, D) queries, the last M positions of the key sequence.
        k, v: (B, Hkv, N, D) sequence keys/values, N >= M, Hq a multiple of Hkv (GQA by index).
        prefix_k, prefix_v: (Hkv, P, D) shared by the batch, or (B, Hkv, P, D); both or neither.
        gate: None for joint mode (one softmax over prefix and sequence keys, prefix tuning), or the
            raw LLaMA-Adapter gate g of shape (Hq,): out = attn_seq + tanh(g) * attn_prefix.
        causal: query i sees sequence keys j <= i + N - M; False lets every query see every key.
        scale: score scale, default 1/sqrt(D).
        key_start: (B,) int tensor, first valid sequence key per batch row (left padding); keys
            before it are masked, prefix keys never are. A row with nothing to attend to gives 0.
        window: sliding window (needs causal): query i also needs i + N - M - j < window, so it sees
            its last `window` sequence keys, itself included (transformers' sliding_window). Prefix
            keys carry no position and stay visible to every query. None: no window.
        impl: "fused", "split" or "auto"; None reads $XPREFIX_ATTN_IMPL (default "auto").
        tiles: the fused route's tile configs, {"fwd" | "dq" | "dkdv": (BLOCK_M, BLOCK_N, num_warps,
            num_stages)}, for tile sweeps; None (and kernels it omits): the defaults for D and dtype.

    Returns:
        (B, Hq, M, D) tensor in q's dtype.
    """
    _check_inputs(q, k, v, prefix_k, prefix_v, gate, key_start, causal, window)
    if choose_impl(q, prefix_k, impl) == "split":
        from kernels.split_attention import split_prefix_attention
        return split_prefix_attention(q, k, v, prefix_k, prefix_v, gate, key_start, causal, scale, window)
    return _PrefixAttention.apply(q, k, v, prefix_k, prefix_v, gate, key_start, bool(causal), scale,
                                  window, tiles)
