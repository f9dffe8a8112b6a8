"""Training throughput of each method on a paper model's shape (random weights), per attention
backend, against the floor: a forward+backward of the frozen model with no adapter at all.

    python benchmarks/bench_train.py --model llama3.2-1b --seq 2048 --batch 4

Prints tokens/s and peak GPU memory per (method, backend), and the ratio of each step time to the
floor's, measured in the same run. Speed goals live here, never in timed unit tests.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adapters  # noqa: E402
import models  # noqa: E402


def step_time(model, ids, floor=False, steps=6, warmup=2):
    """Median seconds of one full optimizer step (forward, backward, AdamW) over `steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        if floor:  # the frozen model's own forward+backward: gradients flow to the input only
            embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
            loss = model(inputs_embeds=embeds, labels=ids).loss
        else:
            loss = model(ids, labels=ids).loss
        loss.backward()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama3.2-1b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["prefix", "adapter", "soft_prompt", "lora"])
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    torch.manual_seed(0)
    config = models.model_config(args.model)
    with torch.device("cuda"):
        base = models.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    base.requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda")
    tokens = args.batch * args.seq
    print(f"{torch.cuda.get_device_name()} | {args.model} bf16 | batch {args.batch} x seq {args.seq} | "
          f"torch {torch.__version__}")
    rows = []
    adapters.set_attn_backend(base, "torch")
    base.set_attn_implementation("sdpa")  # the floor: transformers' own SDPA path, no adapter
    torch.cuda.reset_peak_memory_stats()
    floor = step_time(base, ids, floor=True)
    rows.append(dict(method="none (floor)", backend="sdpa", seconds=floor,
                     peak_gib=torch.cuda.max_memory_allocated() / 2**30))
    for method in args.methods:
        for backend in ("torch", "triton"):
            if method == "lora" and backend == "triton":
                continue  # LoRA does not touch attention
            # attach to the same base in place, then take the adapter off again (no 2x memory)
            model = base
            adapters.attach(model, method, attn_backend=backend)
            torch.cuda.reset_peak_memory_stats()
            seconds = step_time(model, ids)
            rows.append(dict(method=method, backend=backend, seconds=seconds,
                             peak_gib=torch.cuda.max_memory_allocated() / 2**30))
            detach(model)
    print(f"| method | backend | ms/step | tokens/s | peak GiB | time / floor |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['backend']} | {1e3 * r['seconds']:.1f} | {tokens / r['seconds']:,.0f} | "
              f"{r['peak_gib']:.1f} | {r['seconds'] / floor:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), model=args.model,
                                                   batch=args.batch, seq=args.seq, rows=rows), indent=2))


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
    model.xprefix_config = None
    model.requires_grad_(False)


if __name__ == "__main__":
    main()
