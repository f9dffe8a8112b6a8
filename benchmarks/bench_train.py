"""Training throughput of each method on a paper model's shape (random weights), per attention
backend, against the floor: a forward+backward of the frozen model with no adapter at all.

    python benchmarks/bench_train.py --model llama3.2-1b --seq 2048 --batch 4 [--impls fused split]
    python benchmarks/bench_train.py --dry-run    # a tiny Llama on the CPU (interpreter): a smoke test

Prints tokens/s and peak GPU memory per (method, backend, and route of the triton backend), and the
ratio of each step time to the floor's, measured in the same run. The floor's backward crosses the
layers the method's does: from the first adapted layer for prefix tuning and LLaMA-Adapter (the last
30 of the 8B's 32), from the embeddings for a soft prompt and LoRA. Speed goals live here, never in
timed unit tests.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

if "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels on CPU tensors; before triton is imported
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adapters  # noqa: E402
import models  # noqa: E402


def step_time(model, ids, floor_from=None, steps=6, warmup=2):
    """Median seconds of one full optimizer step (forward, backward, AdamW) over `steps`. floor_from:
    the frozen model's own forward+backward, its gradient flowing from the loss back to the input of
    that layer only (where a prefix at the layers from there on stops its backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    handle = None
    if floor_from is not None:
        def leaf(module, args, kwargs):  # the layer's input becomes a leaf that requires grad
            if args:
                return (args[0].detach().requires_grad_(True),) + args[1:], kwargs
            return args, dict(kwargs, hidden_states=kwargs["hidden_states"].detach().requires_grad_(True))
        handle = model.model.layers[floor_from].register_forward_pre_hook(leaf, with_kwargs=True)
    times = []
    for i in range(warmup + steps):
        _sync()
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if handle:
        handle.remove()
    return sorted(times)[len(times) // 2]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama3.2-1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["prefix", "adapter", "soft_prompt", "lora"])
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"], choices=["torch", "triton"])
    parser.add_argument("--impls", nargs="+", default=["auto"], choices=["auto", "fused", "split"],
                        help="routes of the triton backend (kernels.prefix_attention's impl), each timed")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--dry-run", action="store_true", help="a tiny Llama on the CPU, one step each")
    args = parser.parse_args()
    dev, dtype, steps = "cuda", torch.bfloat16, dict(steps=6, warmup=2)
    if args.dry_run:  # checks the paths run; the times are not measurements
        dev, dtype, steps = "cpu", torch.float32, dict(steps=1, warmup=0)
        args.model, args.seq, args.batch = "tiny-llama", 40, 2
        config = models.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2)
    elif not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (--dry-run runs a tiny model on the CPU)")
    else:
        config = models.model_config(args.model)
    torch.manual_seed(0)
    with torch.device(dev):
        base = models.AutoModelForCausalLM.from_config(config, dtype=dtype)
    base.requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=dev)
    tokens = args.batch * args.seq
    device = torch.cuda.get_device_name() if dev == "cuda" else "CPU (dry run: not a measurement)"
    print(f"{device} | {args.model} {str(dtype)[6:]} | batch {args.batch} x seq {args.seq} | "
          f"torch {torch.__version__}")
    rows = []
    adapters.set_attn_backend(base, "torch")
    base.set_attn_implementation("sdpa")  # the floor: transformers' own SDPA path, no adapter
    # two floors: the backward through every layer (as LoRA's and a soft prompt's), and from the first
    # layer the prefix methods adapt (attach's default: the last min(30, all) layers) to the loss
    n_layers = config.num_hidden_layers
    first_adapted = n_layers - min(30, n_layers)
    floors = {}
    for first in sorted({0, first_adapted}):
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        floors[first] = step_time(base, ids, floor_from=first, **steps)
        rows.append(dict(method=f"none (floor, layers {first}-{n_layers - 1})", backend="sdpa",
                         seconds=floors[first], peak_gib=_peak_gib()))
        print(f"  {rows[-1]['method']}: {1e3 * floors[first]:.1f} ms", flush=True)
    runs = [(b, None) for b in args.backends if b == "torch"]
    runs += [("triton", impl) for impl in args.impls if "triton" in args.backends]
    for method in args.methods:
        for backend, impl in runs:
            if method == "lora" and backend == "triton":
                continue  # LoRA does not touch attention
            if impl:  # the route every layer's prefix_attention call takes
                os.environ["XPREFIX_ATTN_IMPL"] = impl
            # attach to the same base in place, then take the adapter off again (no 2x memory)
            model = base
            adapters.attach(model, method, attn_backend=backend)
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = step_time(model, ids, **steps)
            rows.append(dict(method=method, backend=backend if not impl else f"triton ({impl})", seconds=seconds,
                             peak_gib=_peak_gib()))
            print(f"  {method} {rows[-1]['backend']}: {1e3 * seconds:.1f} ms", flush=True)  # kept if cut short
            detach(model)
            os.environ.pop("XPREFIX_ATTN_IMPL", None)
    for r in rows:  # prefix methods against the floor over their own layers; the rest against all layers
        r["floor_layers"] = f"{first_adapted}-{n_layers - 1}" if r["method"] in adapters.PREFIX_METHODS else \
            f"0-{n_layers - 1}"
        r["time_over_floor"] = r["seconds"] / floors[first_adapted if r["method"] in adapters.PREFIX_METHODS else 0]
    print("| method | backend | ms/step | tokens/s | peak GiB | floor's layers | time / floor |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['backend']} | {1e3 * r['seconds']:.1f} | {tokens / r['seconds']:,.0f} | "
              f"{r['peak_gib']:.1f} | {r['floor_layers']} | {r['time_over_floor']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, model=args.model,
                                                   batch=args.batch, seq=args.seq, torch=torch.__version__,
                                                   rows=rows), indent=2))


def detach(model):
    """Undo attach() in place: drop prefix states, soft-prompt hooks and LoRA wrappers."""
    decoder = model.model
    for layer in decoder.layers:
        attn = layer.self_attn
        if hasattr(attn, "prefix_adapter"):
            del attn.prefix_adapter
        for name in ("q_proj", "k_proj", "v_proj"):
            if isinstance(getattr(attn, name), adapters.LoRALinear):
                setattr(attn, name, getattr(attn, name).base)
    if hasattr(decoder, "soft_prompt"):
        for handle in decoder.soft_prompt.handles:
            handle.remove()
        del decoder.soft_prompt
    head = model.get_output_embeddings()
    if getattr(head, "xprefix_contiguous", None) is not None:  # attach's contiguous-input hook on the head
        head.xprefix_contiguous.remove()
        del head.xprefix_contiguous
    model.xprefix_config = None
    model.requires_grad_(False)


if __name__ == "__main__":
    main()
