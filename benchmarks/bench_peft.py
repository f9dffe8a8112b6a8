"""End-to-end speed and memory against Hugging Face PEFT: training, scoring and generation.

    python benchmarks/bench_peft.py                       # the whole table, one GPU, one run
    python benchmarks/bench_peft.py --models llama3.2-1b --methods prefix adapter --seq 2048
    python benchmarks/bench_peft.py --profile llama3.1-8b:prefix:peft:train:2048   # explain a cell
    python benchmarks/bench_peft.py --smoke               # tiny model on the CPU, under a minute
    TRITON_INTERPRET=1 python benchmarks/bench_peft.py --smoke --methods prefix   # + the kernel, interpreted

Random weights in the paper models' shapes, bf16. Per method (soft prompt, prefix tuning,
LLaMA-Adapter, LoRA r=4 on q/k/v) three implementations of the same math:
  xprefix-triton  adapters.attach(..., attn_backend="triton"): our fused kernel, auto's pick on CUDA
  xprefix-torch   adapters.attach(..., attn_backend="torch"): plain PyTorch attention
  peft            PEFT's PromptTuning / PrefixTuning (no projection) / AdaptionPrompt / LoRA
and the frozen model without adapter through transformers' SDPA (the floor). Sections:
  train     tokens/s of full optimizer steps (forward, backward, AdamW) on random tokens, the loss on
            every position but the first; median of --steps after 2 warm-up steps; peak GPU memory.
            The floor's step is the frozen model's forward+backward with gradients to the input only.
  score     XNLI/Belebele-style option log-likelihoods: each example a prompt with 4 options, scored
            as 4 rows of a forward with logits only at the option tokens; examples/s.
  generate  XQuAD-style prompts, batch 16, 32 new tokens, greedy, KV cache: new tokens/s.
--grad-ckpt adds training cells with activation checkpointing: adapters.set_gradient_checkpointing
for ours, transformers' own call (PEFT's documented recipe) for PEFT and the floor.

Equal work: 10 prefix / prompt tokens everywhere; prefix tuning at every layer (PEFT's has no layer
choice), LLaMA-Adapter at the last min(30, all) layers in both. The prompts of a section share one
length, so no implementation pads differently. tests/test_bench_peft.py checks on a tiny model that
the three compute the same losses (and gradients), scores and tokens with PEFT's parameters set from
ours; what differs is parametrisation: PEFT's prefix tuning learns the keys and values themselves,
ours the hidden vectors the frozen k_proj / v_proj turn into them, and PEFT's adapter has one gate
per layer, used as is, where ours has one per head, through tanh. A cell that fails (PEFT on GQA,
the Cache classes, generation, checkpointing, out of memory) keeps its exception's first line.
Ratios are taken within this run: "speed vs PEFT" is our rate over PEFT's, "time / floor" our step
time over the floor's. Results go to OUT.json and OUT.md, rewritten after every cell, so an
interrupted run keeps what it measured.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402
import models  # noqa: E402
from bench_train import detach  # noqa: E402

METHODS = ("soft_prompt", "prefix", "adapter", "lora")
IMPLS = ("xprefix-triton", "xprefix-torch", "peft")
SECTIONS = ("train", "score", "generate")
N_PREFIX, LORA_RANK, LORA_ALPHA = 10, 4, 8.0
TRAIN_TOKENS = {"llama3.2-1b": 8192, "llama3.1-8b": 4096}  # per optimizer step; batch = tokens // seq
GPU = dict(seq=[512, 2048], steps=5, train_tokens=4096, score_examples=32, score_options=4, score_prompt=256,
           score_option_len=2, score_rows=32, gen_batch=16, gen_prompt=256, gen_new=32, reps=2,
           grad_ckpt=["llama3.1-8b:2048"], models=["llama3.2-1b", "llama3.1-8b"])
SMOKE = dict(seq=[32, 64], steps=2, train_tokens=128, score_examples=4, score_options=4, score_prompt=16,
             score_option_len=2, score_rows=8, gen_batch=4, gen_prompt=16, gen_new=4, reps=1,
             grad_ckpt=["tiny:64"], models=["tiny"])


def import_peft():
    try:
        import peft
    except ImportError as e:
        sys.exit(f"the 'peft' columns need Hugging Face PEFT ({e}), an optional dependency of this benchmark "
                 f"only: pip install -r requirements-dev.txt (or pip install peft; it keeps the torch you have), "
                 f"or leave PEFT out with --impls xprefix-triton xprefix-torch")
    return peft


def tiny_config():
    """A Llama with GQA (4 query heads on 2 key/value heads) and head dim 16, the kernel's smallest."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def build_base(name, device, dtype):
    config = tiny_config() if name == "tiny" else models.model_config(name)
    torch.manual_seed(0)
    with torch.device(device):
        base = models.AutoModelForCausalLM.from_config(config, dtype=dtype)
    base.requires_grad_(False)
    base.set_attn_implementation("sdpa")
    return base


def adapted_layers(base, method):
    n = base.config.num_hidden_layers
    return n if method == "prefix" else min(30, n)  # PEFT's PrefixTuning adapts every layer


def peft_config(peft, base, method):
    if method == "soft_prompt":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_PREFIX)
    if method == "prefix":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_PREFIX, prefix_projection=False)
    if method == "adapter":
        return peft.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=N_PREFIX,
                                         adapter_layers=adapted_layers(base, method))
    return peft.LoraConfig(task_type="CAUSAL_LM", r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                           target_modules=["q_proj", "k_proj", "v_proj"])


def wrap(base, method, impl, grad_ckpt=False):
    """The model to run for (method, impl) on `base`, changed in place; unwrap() undoes it."""
    if impl.startswith("xprefix"):
        adapters.attach(base, method, n_prefix_tokens=N_PREFIX, n_adapted_layers=adapted_layers(base, method),
                        lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA, attn_backend=impl.split("-")[1])
        if grad_ckpt:
            adapters.set_gradient_checkpointing(base)
        return base
    base.set_attn_implementation("sdpa")
    if grad_ckpt:  # the PEFT docs' recipe; PEFT checks for it when it wraps the model
        enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if impl == "none":
        return base
    peft = import_peft()
    return peft.get_peft_model(base, peft_config(peft, base, method))


def unwrap(base, model, impl):
    """Take every trace of wrap() off `base`: it is the frozen SDPA model again."""
    if impl.startswith("xprefix"):
        detach(base)
    elif impl == "peft" and model is not None and model is not base:
        if isinstance(model.base_model, import_peft().LoraModel):  # the original Linear layers come back
            model.base_model.unload()
        for layer in base.model.layers:  # AdaptionPrompt wraps the attention modules
            if type(layer.self_attn).__name__ == "AdaptedAttention":
                layer.self_attn = layer.self_attn.model
        base.__dict__.pop("prepare_inputs_for_generation", None)  # PEFT's generate() leaves it on the instance
        base.get_input_embeddings()._forward_hooks.clear()  # PEFT's make-inputs-require-grad hook
    adapters.set_gradient_checkpointing(base, False)
    base.disable_input_require_grads()
    base.requires_grad_(False)
    base.set_attn_implementation("sdpa")


# ---- one unit of each section's work; tests/test_bench_peft.py checks these agree across impls ----

def train_loss(model, ids, floor=False):
    """Next-token loss on every position but the first: PEFT's prompt tuning would also score the
    first token after its prompt, which ours (and the model without prompt) cannot predict."""
    labels = ids.clone()
    labels[:, 0] = -100
    if floor:  # the frozen model's own forward+backward: gradients flow to the input only
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        return model(inputs_embeds=embeds, labels=labels, use_cache=False).loss
    return model(input_ids=ids, labels=labels, use_cache=False).loss


@torch.no_grad()
def option_logprobs(model, ids, option_len):
    """Sum of log-probabilities of each row's last option_len tokens (its option) after the rest."""
    mask = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=option_len + 1, use_cache=False).logits
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (rows, option_len, vocab): the option's predictions
    return logp.gather(-1, ids[:, -option_len:, None]).squeeze(-1).sum(-1)  # (rows,)


@torch.no_grad()
def generate_tokens(model, ids, new_tokens):
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[:, -new_tokens:]


def check_cached_generation(model, ids, new_tokens, ulps=16):
    """Refuse to time a generation path whose KV-cache decoding is wrong. The greedy tokens decoded with
    the cache are scored by one forward pass without it, over the prompt and those same tokens: each
    must be the uncached argmax, or below it by no more than the logits' own rounding, `ulps` units of
    the logits' dtype at the row's largest logit. The margin is for low precision: in bf16, cached and
    uncached attention round differently, and a random-weight model's near-ties then flip greedy tokens
    (an H200 run of 2026-12-04 saw 4 to 36 of 128 tokens differ by exact comparison, the frozen
    model's too); in fp32 the margin is about 1e-6 of the logits, so the check is exact there. A wrong
    cache puts a token where the uncached model ranks it like any other. PEFT 0.21's prompt and prefix
    tuning fail this under transformers >= 5.24, which hands the cache to the model as `cache=` while
    PEFT's prepare_inputs_for_generation reads and writes `past_key_values`: every step looks like the
    first, so prefix tuning decodes against a fresh prefix cache and prompt tuning prepends its prompt
    again."""
    with torch.no_grad():
        cached = generate_tokens(model, ids, new_tokens)
        full = torch.cat([ids, cached], 1)
        # the logits that predicted each new token (a prompt-tuning wrapper may put its virtual tokens
        # first, so positions are counted from the end)
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False).logits
        eps = torch.finfo(logits.dtype).eps
        logits = logits[:, -new_tokens - 1:-1].float()
    gap = logits.max(-1).values - logits.gather(-1, cached[..., None]).squeeze(-1)
    bad = gap > ulps * eps * logits.abs().max(-1).values
    if bad.any():
        raise RuntimeError(f"cached generation is wrong: {bad.sum().item()} of {cached.numel()} greedy tokens are not "
                           f"the uncached argmax within {ulps} units of rounding (worst "
                           f"{(gap / logits.std(-1)).max().item():.2f} s.d. below it; wrong KV-cache decoding); "
                           "not timed")


def section_inputs(section, base, sizes, device, seq=None):
    """Random tokens for one section: (batch, seq) to train on, the scoring set's batches of rows
    (prompt + option, every row one length), or (gen_batch, gen_prompt) prompts."""
    g = torch.Generator().manual_seed(1)
    vocab = base.config.vocab_size
    if section == "train":
        batch = max(1, sizes["train_tokens"] // seq)
        return torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    n_rows = sizes["score_examples"] * sizes["score_options"]
    prompts = torch.randint(0, vocab, (sizes["score_examples"], sizes["score_prompt"]), generator=g)
    options = torch.randint(0, vocab, (n_rows, sizes["score_option_len"]), generator=g)
    rows = torch.cat([prompts.repeat_interleave(sizes["score_options"], 0), options], 1).to(device)
    if section == "score":
        return list(rows.split(sizes["score_rows"]))
    return torch.randint(0, vocab, (sizes["gen_batch"], sizes["gen_prompt"]), generator=g).to(device)


def step_fn(section, model, inputs, sizes, floor=False):
    """A closure doing one unit of the section: an optimizer step, a pass over the scoring set, a
    batch of generation; with the unit's count (tokens or examples) for the rate."""
    if section == "train":
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5) if params else None

        def step():
            train_loss(model, inputs, floor).backward()
            if opt:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return step, inputs.numel()
    if section == "score":
        return (lambda: [option_logprobs(model, rows, sizes["score_option_len"]) for rows in inputs],
                sizes["score_examples"])
    return lambda: generate_tokens(model, inputs, sizes["gen_new"]), inputs.shape[0] * sizes["gen_new"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, reps, warmup, device):
    """Median seconds of `step` over reps after warmup, and peak GiB allocated (warm-up included)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + reps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def profile_cell(step, device, path, warmup=2, reps=3):
    """torch.profiler over `reps` units after warmup: the top ops by self GPU time (on CUDA) and by
    self CPU time (launch and Python overhead, which decoding is made of), written to `path`."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(reps):
            step()
        sync(device)
    averages = prof.key_averages()
    keys = (["self_device_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]
    table = "\n\n".join(f"top ops by {key}, {reps} units\n" + averages.table(sort_by=key, row_limit=30)
                        for key in keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    return table


# ---- the run --------------------------------------------------------------------------------------

def cells_for(args, model_name):
    """(section, seq, grad_ckpt) of one (model, method, impl), checkpointed cells last."""
    ckpt_seqs = [int(c.split(":")[1]) for c in args.grad_ckpt if c.split(":")[0] == model_name]
    cells = []
    for section in args.sections:
        cells += [(section, s, False) for s in args.seq] if section == "train" else [(section, None, False)]
    if "train" in args.sections:
        cells += [("train", s, True) for s in ckpt_seqs]
    return cells


def run(args, sizes, device, dtype, out, meta):
    """Every cell of every model, in place on one base model per shape; outputs rewritten per cell."""
    rows, started = [], time.time()
    for model_name in args.models:
        sizes = dict(sizes, train_tokens=meta["train_tokens"][model_name])
        base = build_base(model_name, device, dtype)
        cells = cells_for(args, model_name)
        for method, impl in [("none", "none")] + [(m, i) for m in args.methods for i in args.impls]:
            for ckpt in sorted({c[2] for c in cells}):
                model, error = None, None
                try:
                    model = wrap(base, method, impl, ckpt)
                except Exception as e:  # e.g. PEFT refusing a model or checkpointing: each of its cells says so
                    error = first_line(e)
                for section, seq, _ in [c for c in cells if c[2] == ckpt]:
                    row = dict(model=model_name, section=section, method=method, impl=impl, seq=seq,
                               grad_ckpt=ckpt, unit="examples/s" if section == "score" else "tokens/s",
                               value=None, seconds=None, peak_gib=None, batch=None, error=error)
                    if error is None:
                        row.update(run_cell(model, base, section, seq, method == "none", sizes, device, args))
                    rows.append(row)
                    print(f"[{time.time() - started:6.0f}s] {fmt_cell(row)}", flush=True)
                    write_outputs(out, rows, meta, args)
                unwrap(base, model, impl)
                del model
                cleanup(device)
        del base
        cleanup(device)
    return rows


def run_cell(model, base, section, seq, floor, sizes, device, args):
    try:
        inputs = section_inputs(section, base, sizes, device, seq)
        model.train(section == "train")
        if section == "generate":
            check_cached_generation(model, inputs, min(sizes["gen_new"], 8))
        step, count = step_fn(section, model, inputs, sizes, floor)
        reps, warmup = (args.steps, 2) if section == "train" else (sizes["reps"], 1)
        seconds, peak = measure(step, reps, warmup, device)
        batch = sizes["score_rows"] if section == "score" else inputs.shape[0]
        return dict(value=count / seconds, seconds=seconds, peak_gib=peak, batch=batch)
    except Exception as e:  # out of memory, or PEFT failing on this path: quoted in the table
        return dict(error=first_line(e))
    finally:
        model.zero_grad(set_to_none=True)
        cleanup(device)


def first_line(e):
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def cleanup(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt_cell(r):
    what = f"{r['model']} {r['section']}{'' if r['seq'] is None else ' ' + str(r['seq'])}" \
           f"{' ckpt' if r['grad_ckpt'] else ''} {r['method']} {r['impl']}"
    if r["error"]:
        return f"{what}: failed: {r['error']}"
    peak = "" if r["peak_gib"] is None else f", {r['peak_gib']:.1f} GiB"
    return f"{what}: {r['value']:,.1f} {r['unit']}{peak}"


# ---- tables and targets ---------------------------------------------------------------------------

def find(rows, **key):
    return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)


def ratio(a, b):
    """a's rate over b's; None when either is missing or failed."""
    return a["value"] / b["value"] if a and b and a["value"] and b["value"] else None


def _f(x, spec=",.0f", suffix=""):
    return "n/a" if x is None else format(x, spec) + suffix


def _value(r, spec=",.0f"):
    return "-" if r is None else f"failed [{r['failure']}]" if r["error"] else _f(r["value"], spec)


def _vs_peft(rows, r, impl, **key):
    return "" if impl in ("peft", "none") else _f(ratio(r, find(rows, impl="peft", **key)), ".2f", "x")


def markdown(rows, meta, args, ours):
    """The report: per model a training table (per seq: rate, peak memory, speed vs PEFT, time over
    the floor's), a scoring + generation table, a checkpointing table; failures quoted; targets."""
    failures = {}
    for r in rows:
        if r["error"]:
            r["failure"] = failures.setdefault(r["error"], len(failures) + 1)
    lines = [f"## xprefix vs PEFT: {meta['device']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, peft "
             f"{meta['peft']}, python {meta['python']}; {meta['dtype']}. Command: `{meta['command']}`", ""]
    if meta["smoke"]:
        lines += ["**Smoke run: a tiny model on the CPU, which checks the script, not the speed.**", ""]
    groups = [("none", "none")] + [(m, i) for m in args.methods for i in args.impls]
    label = {"none": "sdpa, no adapter (floor)"}
    for name in args.models:
        mrows = [r for r in rows if r["model"] == name]
        if "train" in args.sections:
            lines += [f"### {name}: training, {meta['train_tokens'][name]} tokens per step (batch x seq)", "",
                      "| method | implementation |" + "".join(f" {s}: tokens/s | peak GiB | speed vs PEFT | "
                                                           f"time / floor |" for s in args.seq),
                      "|---|---|" + "---|---|---|---|" * len(args.seq)]
            for method, impl in groups:
                cells = []
                for s in args.seq:
                    key = dict(section="train", method=method, seq=s, grad_ckpt=False)
                    r, floor = find(mrows, impl=impl, **key), find(mrows, impl="none", section="train", seq=s,
                                                                  grad_ckpt=False)
                    cells += [_value(r), _f(r and r["peak_gib"], ".1f"), _vs_peft(mrows, r, impl, **key),
                              _f(ratio(floor, r), ".2f")]
                lines.append(f"| {method} | {label.get(impl, impl)} | " + " | ".join(cells) + " |")
            lines.append("")
        if {"score", "generate"} & set(args.sections):
            lines += [f"### {name}: scoring ({meta['score']}) and generation ({meta['generate']})", "",
                      "| method | implementation | score examples/s | peak GiB | speed vs PEFT | "
                      "generate tokens/s | peak GiB | speed vs PEFT |", "|---|---|---|---|---|---|---|---|"]
            for method, impl in groups:
                cells = []
                for section in ("score", "generate"):
                    r = find(mrows, section=section, method=method, impl=impl)
                    cells += [_value(r, ",.1f"), _f(r and r["peak_gib"], ".1f"),
                              _vs_peft(mrows, r, impl, section=section, method=method)]
                lines.append(f"| {method} | {label.get(impl, impl)} | " + " | ".join(cells) + " |")
            lines.append("")
        for s in sorted({r["seq"] for r in mrows if r["grad_ckpt"]}):
            lines += [f"### {name}: activation checkpointing, training at seq {s}", "",
                      "| method | implementation | tokens/s off | tokens/s on | time on / off | peak GiB off | "
                      "peak GiB on | on: speed vs PEFT |", "|---|---|---|---|---|---|---|---|"]
            for method, impl in groups:
                key = dict(section="train", method=method, seq=s)
                off = find(mrows, impl=impl, grad_ckpt=False, **key)
                on = find(mrows, impl=impl, grad_ckpt=True, **key)
                lines.append(f"| {method} | {label.get(impl, impl)} | {_value(off)} | {_value(on)} | "
                             f"{_f(ratio(off, on), '.2f')} | {_f(off and off['peak_gib'], '.1f')} | "
                             f"{_f(on and on['peak_gib'], '.1f')} | "
                             f"{_vs_peft(mrows, on, impl, grad_ckpt=True, **key)} |")
            lines.append("")
    if failures:
        lines += ["Failures, each exception's first line:", ""] + [f"{n}. `{m}`" for m, n in failures.items()] + [""]
    results = targets(rows, args, ours)
    lines += [f"### Targets, on {ours}", "", "| target | model | seq | measured | result |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['model']} | {t['seq'] or ''} | {t['measured']} | {t['result']} |"
              for t in results]
    return "\n".join(lines) + "\n", results


def targets(rows, args, ours):
    """Pass / MISS / n/a of each target, for our default implementation on this device against PEFT
    (LoRA's parity: at least 0.95x, faster counts as parity) and against the floor."""
    out = []

    def check(target, model, seq, cells, measured, ok):
        failed = [c for c in cells if c is None or c["error"]]
        result = ("n/a (not run)" if failed[0] is None else f"n/a ({failed[0]['impl']} failed)") if failed else \
            "pass" if ok else "MISS"
        shown = measured if isinstance(measured, str) else _f(measured, ".2f", "x")
        out.append(dict(target=target, model=model, seq=seq, measured=shown, result=result))

    for name in args.models:
        for s in args.seq if "train" in args.sections else []:
            key = dict(model=name, section="train", seq=s, grad_ckpt=False)
            floor = find(rows, impl="none", **key)
            for method, need in [(m, n) for m, n in (("prefix", 1.3), ("adapter", 1.3), ("lora", 0.95))
                                 if m in args.methods]:
                r, p = find(rows, method=method, impl=ours, **key), find(rows, method=method, impl="peft", **key)
                speed = ratio(r, p)
                check(f"{method} train speed >= {need}x PEFT" + (" (parity)" if method == "lora" else ""),
                      name, s, [r, p], speed, (speed or 0) >= need)
                if method != "lora" and r and p and r["peak_gib"] is not None and p["peak_gib"] is not None:
                    check(f"{method} train peak memory <= PEFT's", name, s, [r, p],
                          f"{r['peak_gib']:.2f} vs {p['peak_gib']:.2f} GiB", r["peak_gib"] <= p["peak_gib"])
                if method == "prefix":
                    slowdown = ratio(floor, r)
                    check("prefix train time <= 1.15x floor", name, s, [r, floor], slowdown,
                          slowdown is not None and slowdown <= 1.15)
        for method in args.methods if "generate" in args.sections else []:
            key = dict(model=name, section="generate", method=method)
            r, p = find(rows, impl=ours, **key), find(rows, impl="peft", **key)
            speed = ratio(r, p)
            check(f"{method} generation speed >= PEFT", name, None, [r, p], speed, (speed or 0) >= 1.0)
    return out


def write_outputs(out, rows, meta, args):
    ours = "xprefix-triton" if meta["device_type"] == "cuda" and "xprefix-triton" in args.impls else "xprefix-torch"
    md, results = markdown(rows, meta, args, ours)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(dict(meta, rows=rows, targets=results), indent=1))
    Path(f"{out}.md").write_text(md)
    return md, results


def versions():
    import transformers
    found = dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version())
    for name in ("triton", "peft"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="models.py names (default: llama3.2-1b llama3.1-8b)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--seq", nargs="+", type=int, help="training sequence lengths (default 512 2048)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per training cell (default 5)")
    parser.add_argument("--train-tokens", type=int, help="tokens per optimizer step (default: 8192 on the 1B "
                        "shape, 4096 otherwise); batch = tokens // seq")
    parser.add_argument("--grad-ckpt", nargs="*", metavar="MODEL:SEQ",
                        help="training cells with activation checkpointing (default llama3.1-8b:2048; none: "
                             "pass the flag alone)")
    parser.add_argument("--profile", metavar="MODEL:METHOD:IMPL:SECTION[:SEQ[:ckpt]]",
                        help="only this cell, under torch.profiler (METHOD and IMPL 'none': the floor); "
                             "writes OUT_profile_<cell>.txt")
    parser.add_argument("--out", help="results stem: writes OUT.json and OUT.md (default benchmarks/results_peft, "
                        "or runs/bench_peft_smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny sizes (CPU, seconds)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        sys.exit("the full benchmark needs a CUDA GPU; --smoke runs a tiny model on the CPU")
    sizes = dict(SMOKE if args.smoke else GPU)
    args.models = args.models or sizes["models"]
    args.seq = args.seq or sizes["seq"]
    args.steps = args.steps or sizes["steps"]
    args.grad_ckpt = sizes["grad_ckpt"] if args.grad_ckpt is None else args.grad_ckpt
    if "xprefix-triton" in args.impls and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        print("xprefix-triton left out: the kernel needs CUDA, or TRITON_INTERPRET=1 to run interpreted")
        args.impls = [i for i in args.impls if i != "xprefix-triton"]
    if "peft" in args.impls:
        import_peft()
    dtype = torch.float32 if args.smoke and device.type == "cpu" else torch.bfloat16
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: threads only wait on each other, worse on a shared machine
    out = Path(args.out or ("runs/bench_peft_smoke" if args.smoke else
                            Path(__file__).resolve().parent / "results_peft"))
    env = "TRITON_INTERPRET=1 " if os.environ.get("TRITON_INTERPRET") == "1" else ""
    train_tokens = {m: args.train_tokens or (sizes["train_tokens"] if args.smoke else TRAIN_TOKENS.get(m, 4096))
                    for m in args.models}
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"cpu ({platform.processor() or platform.machine()})", device_type=device.type,
                date=datetime.date.today().isoformat(),
                command=f"{env}python benchmarks/bench_peft.py {' '.join(sys.argv[1:] if argv is None else argv)}",
                dtype=str(dtype).replace("torch.", ""), smoke=args.smoke, train_tokens=train_tokens,
                score=f"{sizes['score_examples']} examples x {sizes['score_options']} options of "
                      f"{sizes['score_option_len']} tokens after {sizes['score_prompt']} prompt tokens, "
                      f"{sizes['score_rows']} rows per forward",
                generate=f"batch {sizes['gen_batch']}, {sizes['gen_prompt']} prompt tokens, "
                         f"{sizes['gen_new']} new tokens", **versions())
    print(f"{meta['device']} | torch {meta['torch']} | triton {meta['triton']} | transformers "
          f"{meta['transformers']} | peft {meta['peft']} | {meta['dtype']}", flush=True)
    if args.profile:
        return profile_main(args, sizes, device, dtype, out)
    rows = run(args, sizes, device, dtype, out, meta)
    md, results = write_outputs(out, rows, meta, args)
    print("\n" + md)
    for t in results:
        print(f"{t['result']:>5s}  {t['target']}  {t['model']}{'' if t['seq'] is None else ' seq ' + str(t['seq'])}: "
              f"{t['measured']}")
    print(f"wrote {out}.json and {out}.md")
    return rows


def profile_main(args, sizes, device, dtype, out):
    parts = args.profile.split(":")
    if not (4 <= len(parts) <= 6 and parts[1] in METHODS + ("none",) and parts[2] in IMPLS + ("none",)
            and parts[3] in SECTIONS and parts[5:] in ([], ["ckpt"])):
        sys.exit(f"--profile wants MODEL:METHOD:IMPL:SECTION[:SEQ[:ckpt]], e.g. "
                 f"llama3.1-8b:prefix:peft:train:2048; got {args.profile!r}")
    model_name, method, impl, section = parts[:4]
    seq = int(parts[4]) if len(parts) > 4 else (args.seq[-1] if section == "train" else None)
    ckpt = parts[5:] == ["ckpt"]
    sizes = dict(sizes, train_tokens=args.train_tokens or (sizes["train_tokens"] if args.smoke else
                                                            TRAIN_TOKENS.get(model_name, 4096)))
    base = build_base(model_name, device, dtype)
    model = wrap(base, method, impl, ckpt)
    inputs = section_inputs(section, base, sizes, device, seq)
    model.train(section == "train")
    step, _ = step_fn(section, model, inputs, sizes, floor=method == "none")
    path = Path(f"{out}_profile_{'_'.join(parts)}.txt")
    table = profile_cell(step, device, path)
    print(table)
    print(f"wrote {path}")
    return table


if __name__ == "__main__":
    main()
