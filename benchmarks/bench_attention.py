"""Throughput of the prefix-attention routes against PyTorch compositions and the causal-SDPA ceiling
(a script, not a test).

    python benchmarks/bench_attention.py [--quick] [--dims 64 128 256] [--decode] [--json PATH]
    python benchmarks/bench_attention.py --dry-run     # the CPU, interpreter, tiny shape: a smoke test

Providers, all bf16, P = 10 prefix keys shared by the batch, causal, B * N = 16K tokens:
  ours-joint / ours-gated:   prefix_attention(impl="fused"), the one fused Triton kernel
  split-joint / split-gated: prefix_attention(impl="split"), FlashAttention-2 + Triton prefix and merge
  merge-joint: the split route's merge path for joint mode, which split-joint leaves for one call over
      [prefix; k] where that is cheaper (training and prefill)
  (a) sdpa-joint:  SDPA over [prefix; k] with the boolean mask the joint softmax needs
  (b) flex-joint:  compiled FlexAttention with a block mask (prefix columns + causal)
  (c) sdpa-gated:  causal SDPA + a second SDPA over the prefix + tanh gate (two softmaxes)
  (d) sdpa-causal: the ceiling, plain causal SDPA with no prefix, timed under each backend (causal-flash,
      causal-efficient, causal-cudnn) in the same run; the fastest is the ceiling
--decode adds KV-cache decoding cells: one query (M = 1) over N cached keys, B = 64K / N, against SDPA
decoding with no prefix (decode-sdpa, fastest backend); forward only.
FLOPs: 4 * D per (query, key) pair forward, counting every prefix key and the visible sequence keys
(half under causal masking); forward+backward counts 2.5x the forward. Times are do_bench medians.
"""
import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
import triton  # noqa: E402

from kernels import prefix_attention, split_attention  # noqa: E402

N_PREFIX = 10
TOKENS = 16384
ROUTES = ("ours-joint", "ours-gated", "split-joint", "split-gated")
CEILING = ("causal-flash", "causal-efficient", "causal-cudnn")


def _flops(B, Hq, M, N, D, mode):
    visible = N / 2 if mode != "decode" else N  # causal: half the sequence keys; a decoding query sees all
    fwd = 4 * D * B * Hq * M * (visible + N_PREFIX)
    return 2.5 * fwd if mode == "fwd+bwd" else fwd


def _repeat_kv(x, group):
    return x.repeat_interleave(group, dim=1) if group > 1 else x


def _sdpa(q, k, v, group, backend=None, **kw):
    """SDPA, under one backend if given; enable_gqa where the backend takes it, else copied heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    with sdpa_kernel(backends[backend]) if backend else _nothing():
        try:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=group > 1, **kw)
        except RuntimeError:
            return F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group), **kw)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def make_providers(B, Hq, Hkv, N, D, mode, names, dev, tiles=None):
    group = Hq // Hkv
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    M = 1 if mode == "decode" else N
    grad = mode != "decode"
    q = torch.randn(B, Hq, M, D, device=dev, dtype=dt, requires_grad=grad)
    k = torch.randn(B, Hkv, N, D, device=dev, dtype=dt, requires_grad=grad)
    v = torch.randn(B, Hkv, N, D, device=dev, dtype=dt, requires_grad=grad)
    pk = torch.randn(Hkv, N_PREFIX, D, device=dev, dtype=dt, requires_grad=grad)
    pv = torch.randn(Hkv, N_PREFIX, D, device=dev, dtype=dt, requires_grad=grad)
    gate = torch.randn(Hq, device=dev, dtype=torch.float32, requires_grad=grad)

    def with_prefix(x, px):  # (B, H_kv, P + N, D)
        return torch.cat([px.expand(B, -1, -1, -1), x], dim=2)

    providers = {
        "ours-joint": lambda: prefix_attention(q, k, v, pk, pv, impl="fused", tiles=tiles),
        "ours-gated": lambda: prefix_attention(q, k, v, pk, pv, gate, impl="fused", tiles=tiles),
        "split-joint": lambda: prefix_attention(q, k, v, pk, pv, impl="split"),
        "split-gated": lambda: prefix_attention(q, k, v, pk, pv, gate, impl="split"),
        # the split route's merge path for joint mode, which it leaves for the one-call shortcut where
        # copying k and v is cheaper (split_attention.split_prefix_attention): timed to check that rule
        "merge-joint": lambda: split_attention._SplitPrefixAttention.apply(q, k, v, pk, pv, None, None, True,
                                                                           None, None),
    }
    if mode == "decode":  # one query sees every key: no mask
        for backend in ("flash", "efficient", "cudnn"):
            providers[f"decode-{backend}"] = lambda b=backend: _sdpa(q, k, v, group, b)
    else:
        for backend in ("flash", "efficient", "cudnn"):
            providers[f"causal-{backend}"] = lambda b=backend: _sdpa(q, k, v, group, b, is_causal=True)
        providers["sdpa-gated"] = lambda: _sdpa(q, k, v, group, is_causal=True) + gate.tanh().view(
            1, Hq, 1, 1) * _sdpa(q, pk.expand(B, -1, -1, -1), pv.expand(B, -1, -1, -1), group)
        if "sdpa-joint" in names:
            i = torch.arange(N, device=dev)[:, None]
            j = torch.arange(N_PREFIX + N, device=dev)[None, :]
            joint_mask = (j < N_PREFIX) | (j - N_PREFIX <= i)  # (N, P + N)
            providers["sdpa-joint"] = lambda: _sdpa(q, with_prefix(k, pk), with_prefix(v, pv), group,
                                                    attn_mask=joint_mask)
        if "flex-joint" in names:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def prefix_mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx < N_PREFIX) | (kv_idx - N_PREFIX <= q_idx)
            block_mask = create_block_mask(prefix_mask_mod, None, None, N, N_PREFIX + N, device=dev)
            flex = torch.compile(flex_attention, dynamic=False)
            providers["flex-joint"] = lambda: flex(q, with_prefix(k, pk), with_prefix(v, pv),
                                                   block_mask=block_mask, enable_gqa=group > 1)
    keep = {n: f for n, f in providers.items() if n in names or n.startswith(("causal-", "decode-"))}
    return keep, [q, k, v, pk, pv, gate]


BENCH_MS = dict(warmup=25, rep=100)  # do_bench's warm-up and repeat time per measurement


def bench_one(fn, leaves, mode, do, dev):
    def step():
        fn().backward(do)
    if dev == "cpu":  # the dry run: one call, to show the path runs; not a measurement
        start = time.perf_counter()
        with torch.no_grad() if mode != "fwd+bwd" else _nothing():
            step() if mode == "fwd+bwd" else fn()
        return 1e3 * (time.perf_counter() - start)
    if mode != "fwd+bwd":
        with torch.no_grad():
            return triton.testing.do_bench(fn, **BENCH_MS, return_mode="median")
    return triton.testing.do_bench(step, **BENCH_MS, grad_to_none=leaves, return_mode="median")


def run_cell(B, Hq, Hkv, N, D, mode, names, dev, tiles=None):
    providers, leaves = make_providers(B, Hq, Hkv, N, D, mode, names, dev, tiles)
    M = 1 if mode == "decode" else N
    do = torch.randn(B, Hq, M, D, device=dev, dtype=leaves[0].dtype)
    row = dict(Hq=Hq, Hkv=Hkv, D=D, N=N, M=M, B=B, P=N_PREFIX, mode=mode, ms={}, tflops={})
    for name, fn in providers.items():
        try:
            ms = bench_one(fn, leaves, mode, do, dev)
        except Exception as e:  # report, never invent: a failed provider shows as n/a
            print(f"  {name} N={N} D={D} {mode}: failed: {type(e).__name__}: {str(e)[:200]}")
            ms = None
        row["ms"][name] = ms
        row["tflops"][name] = None if ms is None else _flops(B, Hq, M, N, D, mode) / ms * 1e-9
    # the ceiling: the fastest backend's plain attention with no prefix, timed just now
    base = [n for n in row["ms"] if n.startswith(("causal-", "decode-")) and row["ms"][n] is not None]
    best = min(base, key=lambda n: row["ms"][n]) if base else None
    row["ceiling"] = best
    row["ms"]["sdpa-causal"] = row["ms"][best] if best else None
    row["tflops"]["sdpa-causal"] = row["tflops"][best] if best else None
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seq 1024 and 4096 only")
    ap.add_argument("--seqs", type=int, nargs="+", help="sequence lengths (default 512..16384)")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64], help="head dims (Hq=32, Hkv=8)")
    ap.add_argument("--providers", nargs="+", default=list(ROUTES) + ["sdpa-joint", "flex-joint", "sdpa-gated"],
                    help="which to time besides the ceiling backends")
    ap.add_argument("--decode", action="store_true", help="also the KV-cache decoding cells (M = 1)")
    ap.add_argument("--no-train-pass", action="store_true", help="skip the fwd and fwd+bwd cells")
    ap.add_argument("--sweep", action="store_true",
                    help="first time a few tile configs of the fused kernels at N=4096 and keep the fastest")
    ap.add_argument("--sweep-dims", type=int, nargs="+", help="head dims to sweep (default: --dims)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, Triton interpreter, one tiny shape, one call per provider: a smoke test")
    ap.add_argument("--json", default=None, help="default benchmarks/results_attention.json (none in a dry run)")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench's repeat time per measurement (warm-up: 1/4)")
    args = ap.parse_args()
    BENCH_MS.update(warmup=max(1, args.rep_ms // 4), rep=args.rep_ms)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (--dry-run runs a tiny shape on the CPU)")
    if args.dry_run:
        seqs, shapes = [64], [(4, 1, D) for D in args.dims]
    else:
        seqs = args.seqs or ([1024, 4096] if args.quick else [512, 1024, 2048, 4096, 8192, 16384])
        shapes = [(32, 8, D) for D in args.dims]
    json_path = args.json or (None if args.dry_run else os.path.join(os.path.dirname(__file__),
                                                                     "results_attention.json"))
    device = torch.cuda.get_device_name() if dev == "cuda" else "CPU (dry run: not a measurement)"
    print(f"device: {device}  torch {torch.__version__}  triton {triton.__version__}")
    chosen = sweep([s for s in shapes if s[2] in (args.sweep_dims or args.dims)]) if args.sweep else {}
    modes = ([] if args.no_train_pass else ["fwd", "fwd+bwd"]) + (["decode"] if args.decode else [])
    rows = []
    meta = dict(date=datetime.date.today().isoformat(), device=device, torch=torch.__version__,
                triton=triton.__version__, command="python " + " ".join(sys.argv), bench_ms=BENCH_MS,
                tiles={f"{k[0]}-d{k[1]}": v for k, v in chosen.items()}, rows=rows)
    for (Hq, Hkv, D), N, mode in [(s, n, m) for s in shapes for n in seqs for m in modes]:
        tokens = 4 * TOKENS if mode == "decode" else TOKENS
        B = max(1, tokens // N) if not args.dry_run else 1
        tiles = {kind: cfg for (kind, d), cfg in chosen.items() if d == D}
        rows.append(run_cell(B, Hq, Hkv, N, D, mode, args.providers, dev, tiles))
        print(_fmt_row(rows[-1]), flush=True)
        if json_path:  # after every cell, so a run cut short keeps what it measured
            with open(json_path, "w") as f:
                json.dump(meta, f, indent=1)
        if dev == "cuda":
            torch.cuda.empty_cache()
    print()
    print(ceiling_table(rows))
    if any(r["mode"] != "decode" and "sdpa-joint" in r["ms"] for r in rows):
        print()
        print(markdown_table([r for r in rows if r["mode"] != "decode"]))


SWEEP = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates; the first is the pre-sweep default
    ("fwd", 128): [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2)],
    ("fwd", 64): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 4, 4), (128, 128, 4, 3)],
    ("fwd", 256): [(64, 32, 8, 1), (64, 64, 8, 2), (128, 32, 8, 2)],
    ("dq", 128): [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 3), (128, 64, 8, 3)],
    ("dq", 64): [(64, 64, 4, 3), (128, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 4)],
    ("dq", 256): [(64, 32, 8, 1), (64, 64, 8, 2), (64, 32, 4, 2)],
    ("dkdv", 128): [(64, 128, 8, 2), (32, 128, 8, 2), (64, 128, 8, 3), (64, 64, 4, 3)],
    ("dkdv", 64): [(64, 64, 4, 3), (32, 128, 4, 2), (64, 128, 8, 2), (64, 64, 4, 4)],
    ("dkdv", 256): [(32, 32, 8, 1), (32, 64, 8, 2), (64, 32, 8, 2)],
}


def sweep(shapes, N=4096):
    """Time each candidate tile config of one fused kernel (the others at their defaults) on the joint
    mode; a config is kept only if it also reproduces the default's output and gradients."""
    chosen = {}
    for Hq, Hkv, D in shapes:
        B = max(1, TOKENS // N)
        tiles = {}  # the provider reads it at every call: the candidate under test, then the chosen
        providers, leaves = make_providers(B, Hq, Hkv, N, D, "fwd", ["ours-joint"], "cuda", tiles)
        fn = providers["ours-joint"]
        do = torch.randn(B, Hq, N, D, device="cuda", dtype=torch.bfloat16)

        def outputs():
            for t in leaves:
                t.grad = None
            out = fn()
            out.backward(do)
            return [out.detach().float()] + [t.grad.float() for t in leaves[:5]]
        for kind in ("fwd", "dq", "dkdv"):
            best = None
            ref = None
            for cfg in SWEEP[(kind, D)]:
                tiles[kind] = cfg
                try:
                    got = outputs()
                    ref = ref or got
                    bad = max((a - b).abs().max().item() for a, b in zip(got, ref))
                    ms = bench_one(fn, leaves, "fwd" if kind == "fwd" else "fwd+bwd", do, "cuda")
                except Exception as e:
                    print(f"  sweep {kind} D={D} {cfg}: failed: {type(e).__name__}: {str(e)[:120]}")
                    continue
                print(f"  sweep {kind} D={D} {cfg}: {ms:.3f} ms, max diff vs default {bad:.2e}")
                if bad < 0.1 and (best is None or ms < best[0]):
                    best = (ms, cfg)
            tiles[kind] = best[1] if best else SWEEP[(kind, D)][0]
            chosen[(kind, D)] = tiles[kind]
        del providers, leaves
    print("chosen tiles:", chosen, flush=True)
    return chosen


def _ratio(row, a, b):
    x, y = row["ms"].get(a), row["ms"].get(b)
    return None if x is None or y is None else y / x  # speed-up of a over b


def _fmt(x, spec=".0f"):
    return "n/a" if x is None else format(x, spec)


def _fmt_row(row):
    t = row["tflops"]
    return (f"D={row['D']:3d} N={row['N']:5d} B={row['B']:3d} {row['mode']:7s} TFLOP/s "
            + " ".join(f"{k}={_fmt(v)}" for k, v in t.items()) + f" | ceiling {row['ceiling']}")


def _target(row):
    """The issue's goal for a cell: time ratio to the ceiling (decoding: at least SDPA decoding)."""
    if row["mode"] == "decode":
        return 1.0
    return 0.95 if (row["N"], row["D"]) == (4096, 128) else 0.9


def ceiling_table(rows):
    """Each route's speed as a ratio to the ceiling's time (1.0 = as fast as plain causal SDPA with no
    prefix), the best route per mode, and whether the goal is met."""
    head = ("| D | N | B | pass | ceiling | ceiling TFLOP/s | fused joint | split joint | merge joint | "
            "fused gated | split gated | (c) SDPA gated | best joint | best gated | target | met |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        ratios = {k: _ratio(r, k, "sdpa-causal") for k in ROUTES + ("merge-joint", "sdpa-gated")}
        best = [max([x for x in (ratios[f"ours-{m}"], ratios[f"split-{m}"]) if x is not None], default=None)
                for m in ("joint", "gated")]
        met = "n/a" if None in best else ("yes" if min(best) >= _target(r) else "no")
        cells = [r["D"], r["N"], r["B"], r["mode"], r["ceiling"], _fmt(r["tflops"]["sdpa-causal"])]
        cells += [_fmt(ratios[k], ".2f") for k in ("ours-joint", "split-joint", "merge-joint", "ours-gated",
                                                   "split-gated", "sdpa-gated")]
        cells += [_fmt(b, ".2f") for b in best] + [_target(r), met]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown_table(rows):
    """The earlier comparison with the PyTorch compositions (fused kernel only)."""
    head = ("| D | N | B | pass | ours joint | ours gated | (a) SDPA joint | (b) flex joint | "
            "(c) SDPA gated | (d) SDPA causal | joint/(a) | joint/(b) | gated/(c) | joint/(d) | gated/(d) |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        t = r["tflops"]
        cells = [r["D"], r["N"], r["B"], r["mode"]] + [_fmt(t.get(k)) for k in (
            "ours-joint", "ours-gated", "sdpa-joint", "flex-joint", "sdpa-gated", "sdpa-causal")]
        cells += [_fmt(_ratio(r, a, b), ".2f") for a, b in (
            ("ours-joint", "sdpa-joint"), ("ours-joint", "flex-joint"), ("ours-gated", "sdpa-gated"),
            ("ours-joint", "sdpa-causal"), ("ours-gated", "sdpa-causal"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
