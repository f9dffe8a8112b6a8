"""Plain PyTorch prefix attention: the obviously-right version the Triton kernels are tested against.

Builds the whole score matrix with an explicit boolean mask, so it is slow and memory-hungry; use it
for tests and for CPU runs, never for speed.
"""
import math

import torch


def _safe_softmax(scores, allowed):
    """Softmax over the last dim restricted to `allowed`; rows with nothing allowed give zeros.

    Masked scores are set to the dtype's most negative finite value rather than -inf, so an empty row
    gives a finite uniform softmax that the mask then zeroes: no NaN in the output or the gradients.
    """
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * allowed


def prefix_attention_ref(q, k, v, prefix_k=None, prefix_v=None, gate=None, *, causal=True, scale=None,
                         key_start=None, window=None, compute_dtype=None):
    """Same contract as kernels.prefix_attention; computes in `compute_dtype` (default float32, or
    float64 for float64 inputs) and returns q's dtype. Tests pass compute_dtype=q.dtype to get the
    rounding error of a low-precision implementation."""
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    group = Hq // Hkv
    cd = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qc = q.to(cd)
    kc = k.to(cd).repeat_interleave(group, dim=1)  # (B, Hq, N, D)
    vc = v.to(cd).repeat_interleave(group, dim=1)  # (B, Hq, N, D)

    i = torch.arange(M, device=q.device)[:, None]
    j = torch.arange(N, device=q.device)[None, :]
    allowed = (j <= i + (N - M)) if causal else torch.ones(M, N, dtype=torch.bool, device=q.device)
    if window is not None:  # the last `window` keys up to the query's own position; never the prefix
        allowed = allowed & (j > i + (N - M) - window)
    allowed = allowed.expand(B, 1, M, N)  # (B, 1, M, N)
    if key_start is not None:
        allowed = allowed & (j >= key_start.to(q.device).view(B, 1, 1, 1))  # (B, 1, M, N)
    seq_scores = qc @ kc.transpose(-1, -2) * scale  # (B, Hq, M, N)

    if prefix_k is None:
        return (_safe_softmax(seq_scores, allowed) @ vc).to(q.dtype)
    pk = prefix_k.to(cd).expand(B, Hkv, *prefix_k.shape[-2:]).repeat_interleave(group, dim=1)  # (B, Hq, P, D)
    pv = prefix_v.to(cd).expand(B, Hkv, *prefix_v.shape[-2:]).repeat_interleave(group, dim=1)  # (B, Hq, P, D)
    P = pk.shape[2]
    prefix_scores = qc @ pk.transpose(-1, -2) * scale  # (B, Hq, M, P)
    prefix_allowed = torch.ones(B, 1, M, P, dtype=torch.bool, device=q.device)  # never masked

    if gate is None:  # joint: one softmax over [prefix keys, sequence keys]
        probs = _safe_softmax(torch.cat([prefix_scores, seq_scores], dim=-1),
                              torch.cat([prefix_allowed, allowed], dim=-1))  # (B, Hq, M, P + N)
        return (probs @ torch.cat([pv, vc], dim=2)).to(q.dtype)
    # gated (LLaMA-Adapter): separate softmaxes, the prefix part scaled by tanh(g) per head
    seq_out = _safe_softmax(seq_scores, allowed) @ vc
    prefix_out = _safe_softmax(prefix_scores, prefix_allowed) @ pv
    return (seq_out + gate.to(cd).tanh().view(1, Hq, 1, 1) * prefix_out).to(q.dtype)
