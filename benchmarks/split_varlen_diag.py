"""Which left-padded shapes break the split route's gradients on CUDA, and does a change of the
FlashAttention-2 varlen call's max_seqlen_q fix them? (H200, 2026-12-04: every joint case with one
query per sequence, M = 1 with padding, had dq wrong by 0.3 to 48 while the output was right.)

    python benchmarks/split_varlen_diag.py          # a CUDA GPU; prints one line per case and variant

Each case: bf16 inputs, the split route's output and gradients against prefix_attention_ref in fp32;
"rel" is max |got - ref| / max |ref| per tensor. Variants of the backward call: max_q as the forward's
(max(M, 2)), 1, and M rounded up to 128."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels.split_attention as sa  # noqa: E402
from kernels.reference import prefix_attention_ref  # noqa: E402

ORIGINAL = sa._flash_backward
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs its own op: a dry run of this script
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def with_max_q(rule):
    def backward(do, q, k, v, out, lse, state, *rest):
        if state["cu"] is not None:
            state = dict(state, max_q=rule(q.shape[2]))
        return ORIGINAL(do, q, k, v, out, lse, state, *rest)
    return backward


VARIANTS = {"as forward": lambda M: max(M, 2), "1": lambda M: 1, "128": lambda M: 128 * ((M + 127) // 128)}


def case(B, Hq, Hkv, M, N, P, gated, causal, key_start, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    q, k, v, do = r(B, Hq, M, D), r(B, Hkv, N, D), r(B, Hkv, N, D), r(B, Hq, M, D)
    pk, pv = (r(Hkv, P, D), r(Hkv, P, D)) if P else (None, None)
    gate = r(Hq) if gated else None
    ks = torch.tensor(key_start, device=DEVICE)
    tensors = [q, k, v, pk, pv, gate]

    def grads(fn, dtype):  # the gate stays fp32, as adapters.py keeps it
        leaves = [(t if i == 5 else t.to(dtype)).detach().requires_grad_() if t is not None else None
                  for i, t in enumerate(tensors)]
        out = fn(*leaves, causal=causal, key_start=ks)
        got = torch.autograd.grad(out, [t for t in leaves if t is not None], do.to(dtype))
        return [out] + list(got)

    ref = grads(prefix_attention_ref, torch.float32)
    lines = []
    for name, rule in VARIANTS.items():
        sa._flash_backward = with_max_q(rule)
        try:
            got = grads(sa.split_prefix_attention, DTYPE)
            rel = [(a.float() - b).abs().max().item() / max(b.abs().max().item(), 1e-6) for a, b in zip(got, ref)]
            lines.append(f"{name}: " + " ".join(f"{n}={e:.1e}" for n, e in zip(["out", "dq", "dk", "dv"], rel)))
        except Exception as e:  # noqa: BLE001
            lines.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        finally:
            sa._flash_backward = ORIGINAL
    return lines


N = 37
CASES = [  # (B, Hq, Hkv, M, N, P, gated, causal, key_start)
    (1, 4, 4, 1, N, 0, False, True, [5]),
    (2, 4, 4, 1, N, 0, False, True, [5, 9]),
    (3, 4, 4, 1, N, 0, False, True, [0, 5, N - 1]),
    (3, 4, 1, 1, N, 10, False, True, [0, 5, N - 1]),
    (3, 8, 1, 1, N, 10, False, True, [0, 5, N - 1]),
    (3, 4, 4, 1, N, 0, False, False, [0, 5, N - 1]),
    (3, 4, 4, 1, N, 10, True, True, [0, 5, N - 1]),
    (2, 4, 4, 4, N, 0, False, True, [5, N - 1]),   # M = 4: row 1 has one real query
    (2, 4, 4, 4, N, 0, False, True, [5, N - 3]),   # M = 4: row 1 has three real queries
    (2, 4, 4, 16, 64, 0, False, True, [0, 63]),    # training-like: row 1 has one real token
]

if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)")
    for c in CASES:
        for line in case(*c):
            print(f"B{c[0]} H{c[1]}/{c[2]} M{c[3]} N{c[4]} P{c[5]} {'gated' if c[6] else 'joint'} "
                  f"{'causal' if c[7] else 'full'} ks={c[8]} | {line}", flush=True)
