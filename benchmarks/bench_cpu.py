"""The CPU path: bf16 against fp32 on SmolLM2-135M and Gemma 3 270M, and the CPU's other costs.

    python benchmarks/bench_cpu.py            # the measurement (make bench-cpu); ~15 min on 2 quiet cores
    python benchmarks/bench_cpu.py --quick    # small shapes, one rep: checks the script runs, measures nothing
    python benchmarks/bench_cpu.py --profile --threads 1   # also the top operators of a train step per dtype

Prints the CPU, torch's capability and what `dtype: auto` picks (models.auto_dtype), then per model:
- speed, fp32 and bf16 timed in alternation in one run (median of --reps after a warm-up), and the
  ratio bf16/fp32 (below 1: bf16 is faster): a prefix-tuning train step (forward, backward, AdamW)
  on real XQuAD training examples cut to 4 x 384 tokens as train.py cuts them, with train.answer_loss
  (LM head on answer positions only) and, for comparison, with the loss over every position's
  logits (transformers' `labels=`, the full-vocabulary cost; SmolLM2 only, Gemma's 262k-word logits
  would take GBs); prefill of the same 4 x 384; greedy generation of 16 new tokens after 8 prompts
  of 200 tokens.
- quality: how often fp32 and bf16 pick the same next token on those 4 x 384 tokens, and the base
  model's XQuAD F1 both ways on the same English questions (greedy, the task's stop, prompts cut to
  384 tokens, evaluate.generate).
- other CPU costs, in the dtype auto picks, each as a ratio within this run: stopping generation at
  the task's stop string or EOS against always generating max_new_tokens; batching prompts sorted
  by length against in their given order (padded fraction and time); XNLI's choices scored after one
  cached context against a forward pass per choice (with how far their scores differ); torch's
  threads against one.

Writes the numbers to --json (benchmarks/results_cpu.json) and appends a section to --results-md
(benchmarks/RESULTS.md); --quick writes neither unless named. Timings on a shared machine are noisy:
the load average before and after is recorded; compare ratios, which are measured side by side.
"""
import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import adapters  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fns, reps, warmup):
    """Median seconds of each of `fns` ({name: fn}), called in turn (a, b, a, b, ...) so that a change
    in the machine's load falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def row(rows, model, what, shape, seconds, **extra):
    fp32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
    rows.append(dict(model=model, what=what, shape=shape, fp32_s=fp32, bf16_s=bf16, ratio=bf16 / fp32, **extra))
    print(f"  {what:<44} {shape:<16} fp32 {fp32:8.3f} s  bf16 {bf16:8.3f} s  bf16/fp32 {bf16 / fp32:.2f}", flush=True)


def train_batch(task, tokenizer, data_dir, batch, length):
    """`batch` real XQuAD training examples whose prompts reach `length` tokens, cut to it from the left as
    train.py cuts them: (input_ids, attention_mask, labels) of shape (batch, length), answer + EOS labelled."""
    examples = task.train_examples(data_dir, source="xquad_en_articles_0_31", n=8 * batch, seed=0)
    features = [data.training_features(tokenizer, task.prompt(ex), task.target(ex), length)[:2] for ex in examples]
    features = sorted(features, key=lambda f: -len(f[0]))[:batch]
    ids, mask = train.pad_batch([ids for ids, _ in features], tokenizer.pad_token_id)
    labels, _ = train.pad_batch([labels for _, labels in features], -100)
    return ids, mask, labels


def make_step(model, ids, mask, labels, full_vocab):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    def step():
        if full_vocab:  # logits at every position, fp32 cross-entropy over the whole vocabulary
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            loss = train.answer_loss(model, ids, mask, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def op_times(step, vocab_size):
    """Self CPU seconds per operator of one call of `step`, torch.profiler's, with matmuls split into the LM
    head's and the layers' and PyTorch's CPU flash-attention kernels named."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    ops = {}
    for event in prof.key_averages(group_by_input_shape=True):
        name = event.key
        if name == "aten::mm":
            name += " (LM head)" if any(vocab_size in shape for shape in event.input_shapes if shape) else " (layers)"
        elif name.startswith("aten::_scaled_dot_product_flash_attention_for_cpu"):
            name = "SDPA flash (CPU) " + ("backward" if name.endswith("backward") else "forward")
        ops[name] = ops.get(name, 0.0) + event.self_cpu_time_total / 1e6
    return ops


def print_profile(name, what, steps, vocab_size, out, top=12):
    times = {dt: op_times(step, vocab_size) for dt, step in steps.items()}
    a, b = times[torch.float32], times[torch.bfloat16]
    total = sum(b.values())
    names = sorted(set(a) | set(b), key=lambda k: -b.get(k, 0.0))[:top]
    out["profile"].append(dict(model=name, what=what, fp32_total_s=sum(a.values()), bf16_total_s=total,
                               ops=[dict(op=k, fp32_s=a.get(k, 0.0), bf16_s=b.get(k, 0.0)) for k in names]))
    print(f"  profile of one {what}: self CPU fp32 {sum(a.values()):.2f} s, bf16 {total:.2f} s\n"
          f"    {'op':<44}{'fp32 s':>9}{'bf16 s':>9}{'bf16/fp32':>10}{'of bf16':>9}")
    for k in names:
        ratio = b.get(k, 0.0) / a[k] if a.get(k) else float("nan")
        print(f"    {k[:43]:<44}{a.get(k, 0.0):9.3f}{b.get(k, 0.0):9.3f}{ratio:10.2f}{100 * b.get(k, 0.0) / total:8.1f}%")


def left_padded(tokenizer, encoded):
    length = max(map(len, encoded))
    ids = torch.full((len(encoded), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row_, e in enumerate(encoded):
        ids[row_, length - len(e):] = torch.tensor(e)
        mask[row_, length - len(e):] = 1
    return ids, mask


@torch.no_grad()
def prefill(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits


@torch.no_grad()
def greedy(model, tokenizer, ids, mask, new_tokens, stop=None):
    """Greedy generation; stop None: exactly `new_tokens` (EOS ignored), else rows stop at EOS or `stop`."""
    fixed = dict(min_new_tokens=new_tokens) if stop is None else dict(stop_strings=list(stop), tokenizer=tokenizer)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, top_k=None,
                          pad_token_id=tokenizer.pad_token_id, **fixed)


def bench_model(name, args, task, out):
    s = args.sizes
    print(f"\n{name}", flush=True)
    loaded = {dt: models.load_model(name, dtype=dt) for dt in DTYPES}
    tokenizer = loaded[torch.float32][1]
    nets = {dt: m.eval() for dt, (m, _) in loaded.items()}
    for m in nets.values():
        adapters.set_attn_backend(m, "torch")  # the CPU's path (attach picks it too)
    rows = out["rows"]
    ids, mask, labels = train_batch(task, tokenizer, args.data_dir, s["batch"], s["length"])
    shape = f"{ids.shape[0]} x {ids.shape[1]}"

    # prefill and generation, base model
    row(rows, name, "prefill", shape, timed({dt: lambda m=m: prefill(m, ids, mask) for dt, m in nets.items()},
                                            args.dtype_reps, args.dtype_warmup))
    questions = task.eval_examples("en", args.data_dir, subset="articles_32_47", n=s["questions"], seed=0)
    prompts = [task.prompt(ex) for ex in questions]
    gen_ids, gen_mask = left_padded(tokenizer, [data.prompt_ids(tokenizer, p, s["gen_prompt"])
                                                for p in prompts[:s["gen_batch"]]])
    gen = timed({dt: lambda m=m: greedy(m, tokenizer, gen_ids, gen_mask, s["new_tokens"]) for dt, m in nets.items()},
                args.dtype_reps, args.dtype_warmup)
    row(rows, name, f"greedy generation, {s['new_tokens']} new tokens", f"{gen_ids.shape[0]} x {gen_ids.shape[1]}",
        gen)

    # quality: the same tokens and questions both ways
    with torch.no_grad():
        argmax = {dt: m(input_ids=ids, attention_mask=mask).logits.argmax(-1)[mask.bool()] for dt, m in nets.items()}
    agree = (argmax[torch.float32] == argmax[torch.bfloat16]).float().mean().item()
    answers, scores, seconds = {}, {}, {}
    for dt, m in nets.items():
        start = time.perf_counter()
        answers[dt] = evaluate.generate(m, tokenizer, prompts, batch_size=s["gen_batch"], device="cpu",
                                        max_new_tokens=task.max_new_tokens, stop=task.stop,
                                        max_length=s["eval_length"])
        seconds[dt] = time.perf_counter() - start
        scores[dt] = [task.score(text, ex) for text, ex in zip(answers[dt], questions)]
    f1 = {dt: statistics.mean(sc["f1"] for sc in scores[dt]) for dt in DTYPES}
    same = sum(a == b for a, b in zip(answers[torch.float32], answers[torch.bfloat16])) / len(prompts)
    quality = dict(model=name, next_token_argmax_agreement=agree, n_positions=int(mask.sum()),
                   n_questions=len(prompts), f1_fp32=f1[torch.float32], f1_bf16=f1[torch.bfloat16],
                   em_fp32=statistics.mean(sc["em"] for sc in scores[torch.float32]),
                   em_bf16=statistics.mean(sc["em"] for sc in scores[torch.bfloat16]), same_answer=same,
                   eval_seconds_fp32=seconds[torch.float32], eval_seconds_bf16=seconds[torch.bfloat16])
    out["quality"].append(quality)
    print(f"  quality: next-token argmax agrees at {100 * agree:.1f}% of {quality['n_positions']} positions; XQuAD en "
          f"F1 fp32 {f1[torch.float32]:.1f} / bf16 {f1[torch.bfloat16]:.1f} on {len(prompts)} questions "
          f"({100 * same:.0f}% identical answers); evaluation {seconds[torch.float32]:.1f} s / "
          f"{seconds[torch.bfloat16]:.1f} s", flush=True)

    # other CPU costs, in the dtype auto picks
    auto, _ = models.auto_dtype("cpu")
    costs(name, nets[auto], tokenizer, task, prompts, args, out, str(auto).removeprefix("torch."))

    # training: prefix tuning (attach's defaults), answer-only loss and, where it fits, the full-vocabulary one
    for dt, m in nets.items():
        adapters.attach(m, "prefix", attn_backend="torch", seed=0)
        m.train()
    steps = {dt: make_step(m, ids, mask, labels, full_vocab=False) for dt, m in nets.items()}
    row(rows, name, "train step (prefix), answer-only loss", shape,
        timed(steps, args.dtype_reps, args.dtype_warmup))
    if args.profile:
        print_profile(name, "train step (prefix), answer-only loss", steps, tokenizer.vocab_size, out)
    if ids.numel() * tokenizer.vocab_size * 4 <= 2**30:  # the fp32 logits of every position: at most 1 GiB
        full = {dt: make_step(m, ids, mask, labels, full_vocab=True) for dt, m in nets.items()}
        row(rows, name, "train step (prefix), loss on all logits", shape,
            timed(full, args.dtype_reps, args.dtype_warmup))
        if args.profile:
            print_profile(name, "train step (prefix), loss on all logits", full, tokenizer.vocab_size, out)
        with torch.no_grad():  # the same loss: answer_loss only skips the positions that carry no label
            m = nets[torch.float32]
            a, b = train.answer_loss(m, ids, mask, labels).item(), m(input_ids=ids, attention_mask=mask,
                                                                     labels=labels).loss.item()
        out["loss_check"].append(dict(model=name, answer_loss=a, labels_loss=b))
        print(f"  fp32 loss: answer_loss {a:.6f}, labels= {b:.6f} (difference {abs(a - b):.1e})", flush=True)
    del nets, loaded


@torch.no_grad()
def per_choice_logprobs(model, tokenizer, prompts, choices, batch_size):
    """The baseline of evaluate.choice_logprobs: a right-padded forward pass over context + choice for
    every choice (how evaluate.py scored choices before 2026-12-05), longest first."""
    pairs = [(i, j, data.prompt_ids(tokenizer, p), data.answer_ids(tokenizer, p, c))
             for i, (p, cs) in enumerate(zip(prompts, choices)) for j, c in enumerate(cs)]
    pairs.sort(key=lambda x: -len(x[2]) - len(x[3]))
    out = [[None] * len(cs) for cs in choices]
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        ids, mask = train.pad_batch([p + c for _, _, p, c in chunk], tokenizer.pad_token_id)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        for row, (i, j, p, c) in enumerate(chunk):
            logits = model.lm_head(hidden[row, len(p) - 1:len(p) + len(c) - 1]).float()
            out[i][j] = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).sum().item()
    return out


def costs(name, model, tokenizer, task, prompts, args, out, dtype):
    s = args.sizes
    rows = out["costs"]

    def add(what, a, b, note):
        rows.append(dict(model=name, dtype=dtype, what=what, a_s=a, b_s=b, ratio=a / b, note=note))
        print(f"  {what:<60} {a:8.3f} s / {b:8.3f} s = {a / b:.2f}  {note}", flush=True)

    # stopping: rows end at the task's stop string or EOS, against always max_new_tokens
    encoded = [data.prompt_ids(tokenizer, p, s["eval_length"] - task.max_new_tokens) for p in prompts[:s["gen_batch"]]]
    ids, mask = left_padded(tokenizer, encoded)
    outputs = {}
    def run(stop):
        outputs[stop] = greedy(model, tokenizer, ids, mask, task.max_new_tokens, stop)
    t = timed({"stop": lambda: run(task.stop), "fixed": lambda: run(None)}, args.reps, args.warmup)
    steps = outputs[task.stop].shape[1] - ids.shape[1]
    add(f"generation: stop at {task.stop!r}/EOS vs {task.max_new_tokens} new tokens", t["stop"], t["fixed"],
        f"{steps} of {task.max_new_tokens} decoding steps run (the batch runs until its last row stops)")

    # batching by length: the same prompts in batches of their given order, or sorted by token length
    encoded = [data.prompt_ids(tokenizer, p, s["sort_length"]) for p in prompts]
    shuffled = list(range(len(encoded)))
    random.Random(0).shuffle(shuffled)
    orders = dict(sorted=sorted(shuffled, key=lambda i: -len(encoded[i])), given=shuffled)
    padded = {}
    def forward_all(order):
        pads = 0
        for i in range(0, len(order), s["gen_batch"]):
            batch = [encoded[k] for k in order[i:i + s["gen_batch"]]]
            ids_, mask_ = left_padded(tokenizer, batch)
            prefill(model, ids_, mask_)
            pads += int((mask_ == 0).sum())
        padded[tuple(order)] = pads / (pads + sum(map(len, encoded)))
    t = timed({k: lambda o=o: forward_all(o) for k, o in orders.items()}, args.reps, args.warmup)
    add(f"prefill of {len(encoded)} prompts in batches of {s['gen_batch']}: sorted vs given order", t["sorted"],
        t["given"], f"padding {100 * padded[tuple(orders['sorted'])]:.0f}% vs {100 * padded[tuple(orders['given'])]:.0f}%"
        " of tokens")

    # train.py's batches: shuffled, right-padded to the longest (counted, not timed; max_length's default)
    examples = task.train_examples(args.data_dir, source="xquad_en_articles_0_31", n=s["train_count"], seed=0)
    lengths = [len(data.training_features(tokenizer, task.prompt(ex), task.target(ex), 1024)[0]) for ex in examples]
    def padding(batches):
        total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / total
    shuffled, bucketed = (padding(train.batch_order(len(lengths), 8, 0, 0)),
                          padding(train.batch_order(len(lengths), 8, 0, 0, lengths)))
    out["train_padding"].append(dict(model=name, n_examples=len(lengths), batch_size=8, shuffled=shuffled,
                                     by_length=bucketed))
    print(f"  train.py's batches of 8 ({len(lengths)} XQuAD examples): padding {100 * shuffled:.0f}% of tokens "
          f"shuffled, {100 * bucketed:.0f}% with group_by_length", flush=True)

    # choice scoring (XNLI's three labels): the context read once, each choice after its KV cache
    # (evaluate.choice_logprobs), against one forward pass over context + choice per choice
    xnli = data.load_task("xnli")
    rows_ = xnli.eval_examples("en", args.data_dir, subset="heldout", split="validation", n=s["choice_examples"], seed=0)
    got = {}
    def cached():
        got["cached"] = evaluate.choice_logprobs(model, tokenizer, [xnli.prompt(r) for r in rows_],
                                                 [xnli.choices(r) for r in rows_], batch_size=8, device="cpu")
    def per_choice():
        got["per_choice"] = per_choice_logprobs(model, tokenizer, [xnli.prompt(r) for r in rows_],
                                                [xnli.choices(r) for r in rows_], batch_size=8)
    t = timed({"cached": cached, "per_choice": per_choice}, args.reps, args.warmup)
    worst = max(abs(a - b) for x, y in zip(got["cached"], got["per_choice"]) for a, b in zip(x, y))
    same = sum(max(range(3), key=x.__getitem__) == max(range(3), key=y.__getitem__)
               for x, y in zip(got["cached"], got["per_choice"]))
    label_tokens = [len(data.answer_ids(tokenizer, xnli.prompt(rows_[0]), c)) for c in xnli.choices(rows_[0])]
    add(f"XNLI choice scoring, {len(rows_)} rows: one cached context vs a forward per choice", t["cached"],
        t["per_choice"], f"labels {'/'.join(map(str, label_tokens))} tokens; same choice on {same}/{len(rows_)}, "
        f"scores differ by at most {worst:.1e}")

    # threads: torch's default (all cores) against one
    n_threads, n_default = torch.get_num_threads(), args.default_threads
    ids, mask = left_padded(tokenizer, encoded[:s["batch"]])
    def at(n, fn):
        def go():
            torch.set_num_threads(n)
            try:
                fn()
            finally:
                torch.set_num_threads(n_threads)
        return go
    for what, fn in [(f"prefill {ids.shape[0]} x {ids.shape[1]}", lambda: prefill(model, ids, mask)),
                     (f"greedy, {s['new_tokens']} new tokens", lambda: greedy(model, tokenizer, ids, mask,
                                                                              s["new_tokens"]))]:
        t = timed({"n": at(n_default, fn), "1": at(1, fn)}, args.reps, args.warmup)
        add(f"{what}: {n_default} threads vs 1", t["n"], t["1"], "")


SIZES = dict(full=dict(batch=4, length=384, questions=16, gen_batch=8, gen_prompt=200, new_tokens=16,
                       eval_length=384, sort_length=512, train_count=256, choice_examples=48),
             quick=dict(batch=2, length=96, questions=4, gen_batch=2, gen_prompt=48, new_tokens=4,
                        eval_length=128, sort_length=None, train_count=16, choice_examples=4))


EMULATED = " (bf16 is emulated on this CPU, several times slower: one run each, no warm-up)"


def markdown(out):
    lines = [f"\n## CPU: bf16 against fp32, and other CPU costs ({out['date']})\n",
             f"`{out['command']}` on {out['cpu']} ({os.cpu_count()} logical cores, torch capability "
             f"{out['capability']}, torch threads: {out['threads']}), torch {out['torch']}, transformers "
             f"{out['transformers']}; load average {out['load_before']:.1f} before, {out['load_after']:.1f} after. "
             f"{out['auto_message']}; probe: a bf16 matmul runs {out['probe_speedup']:.2f}x as fast as fp32. "
             f"bf16 against fp32: medians of {out['dtype_reps']} run(s) after {out['dtype_warmup']} warm-up, in "
             f"alternation{EMULATED if out['dtype_reps'] < out['reps'] else ''}"
             f"; other costs: medians of {out['reps']} runs after {out['warmup']} warm-up. bf16/fp32 below 1: bf16 is "
             f"faster.\n",
             "| model | what | shape | fp32 s | bf16 s | bf16/fp32 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['what']} | {r['shape']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | {r['ratio']:.2f} |"
              for r in out["rows"]]
    lines += ["", "| model | next-token argmax agreement | XQuAD en F1 fp32 | F1 bf16 | identical answers | "
              "eval s fp32 / bf16 |", "|---|---|---|---|---|---|"]
    lines += [f"| {q['model']} | {100 * q['next_token_argmax_agreement']:.1f}% of {q['n_positions']} | "
              f"{q['f1_fp32']:.1f} | {q['f1_bf16']:.1f} | {100 * q['same_answer']:.0f}% of {q['n_questions']} | "
              f"{q['eval_seconds_fp32']:.1f} / {q['eval_seconds_bf16']:.1f} |" for q in out["quality"]]
    lines += ["", "| model | dtype | cost | a s | b s | a/b | note |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['dtype']} | {c['what']} | {c['a_s']:.3f} | {c['b_s']:.3f} | {c['ratio']:.2f} | "
              f"{c['note']} |" for c in out["costs"]]
    lines += [""] + [f"{p['model']}: train.py's shuffled batches of {p['batch_size']} ({p['n_examples']} XQuAD training "
                     f"examples) are {100 * p['shuffled']:.0f}% padding; with group_by_length, {100 * p['by_length']:.0f}%."
                     for p in out["train_padding"]]
    for p in out["profile"]:
        lines += ["", f"Profile of one {p['what']} on {p['model']} (torch.profiler, self CPU time): fp32 "
                      f"{p['fp32_total_s']:.2f} s, bf16 {p['bf16_total_s']:.2f} s.", "",
                  "| operator | fp32 s | bf16 s | share of bf16 |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['fp32_s']:.3f} | {o['bf16_s']:.3f} | {100 * o['bf16_s'] / p['bf16_total_s']:.0f}% |"
                  for o in p["ops"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, one rep, no warm-up: a dry run")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators of one "
                        "train step, fp32 against bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per cell (default 3; --quick 1)")
    parser.add_argument("--size", nargs="+", default=[], metavar="KEY=N",
                        help=f"change a shape, e.g. length=512 (keys: {', '.join(SIZES['full'])})")
    parser.add_argument("--full-bf16", action="store_true", help="where bf16 is emulated (no AMX or AVX-512 BF16), "
                        "time the bf16/fp32 cells with --reps and a warm-up too; by default they run once there")
    parser.add_argument("--json", default=None, help="default benchmarks/results_cpu.json (--quick: none)")
    parser.add_argument("--results-md", default=None, help="append here; default benchmarks/RESULTS.md (--quick: none)")
    args = parser.parse_args()
    args.sizes = dict(SIZES["quick" if args.quick else "full"])
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in args.sizes or not value.isdigit():
            parser.error(f"--size {item}: expected KEY=N with KEY one of {', '.join(args.sizes)} and N a whole number")
        args.sizes[key] = int(value)
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = 0 if args.quick else 1
    if not args.quick:
        args.json = args.json or str(ROOT / "benchmarks" / "results_cpu.json")
        args.results_md = args.results_md or str(ROOT / "benchmarks" / "RESULTS.md")
    # where bf16 is emulated it is several times slower, so its ratio needs no median: one run of each
    native = models.cpu_bf16_native()[0]
    args.dtype_reps, args.dtype_warmup = ((args.reps, args.warmup) if native or args.quick or args.full_bf16
                                          else (1, 0))
    args.default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers
    auto, why = models.auto_dtype("cpu")
    out = dict(date=datetime.date.today().isoformat(), command="python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:]),
               cpu=cpu_name(), capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
               torch=torch.__version__, transformers=transformers.__version__, auto_dtype=str(auto).removeprefix("torch."),
               auto_reason=why, auto_message=models.dtype_message("auto", "cpu", auto),
               probe_speedup=models._bf16_speedup(), load_before=os.getloadavg()[0], reps=args.reps,
               warmup=args.warmup, dtype_reps=args.dtype_reps, dtype_warmup=args.dtype_warmup, sizes=args.sizes, rows=[], quality=[], costs=[], train_padding=[], loss_check=[], profile=[])
    print(f"{out['cpu']} | torch {out['torch']} capability {out['capability']}, {out['threads']} threads | "
          f"{out['auto_message']} | probe: bf16 matmul {out['probe_speedup']:.2f}x fp32 | load {out['load_before']:.1f}"
          + (" | --quick: not a measurement" if args.quick else "")
          + (EMULATED.replace(" (", " | ").rstrip(")") if args.dtype_reps < args.reps else ""), flush=True)
    task = data.load_task("xquad")
    for name in args.models:
        bench_model(name, args, task, out)
    out["load_after"] = os.getloadavg()[0]
    print(f"\nload average after: {out['load_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    if args.results_md:
        with open(args.results_md, "a") as f:
            f.write(markdown(out))
        print(f"appended to {args.results_md}")


if __name__ == "__main__":
    main()
