"""XQuAD generation on the CPU: questions on one passage reading it once, against each prompt whole.

    python benchmarks/bench_generate.py                        # ~15 min on 2 quiet cores
    python benchmarks/bench_generate.py --quick                # 4 questions, SmolLM2, English: a dry run

Per model and language, the first --questions held-out questions (articles 32-47, in the file's
order, so several ask about each passage, as in a whole evaluation) are answered three ways in one
run: fp32, batches of 16 (the replica's), the task's stop string and max_new_tokens (32; the replica
allows 160, which only a row that runs on without a newline reaches):
- shared: evaluate.generate, a batch's common passage read once (evaluate.shared_prefixes);
- whole: evaluate.generate(share=False), every prompt read whole by the same decoding loop;
- transformers: model.generate() on the same batches, how evaluate.generate decoded before 2026-12-05.
Prints the seconds of each, the ratios shared/transformers and whole/transformers, how many answers
are identical to transformers', and the prompt tokens each reads. Writes --json and appends to
--results-md (--quick writes neither unless named).
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
from bench_cpu import cpu_name  # noqa: E402
from distributed import map_batches  # noqa: E402
from train import pad_batch  # noqa: E402


@torch.no_grad()
def transformers_generate(model, tokenizer, prompts, batch_size, max_new_tokens, stop):
    """The baseline: evaluate.generate as it was, transformers' generate() on left-padded batches of
    prompts sorted longest first, greedy, stopping at the stop strings."""
    encoded = [data.prompt_ids(tokenizer, p) for p in prompts]

    def batch(rows):
        ids, mask = pad_batch([encoded[i] for i in rows], tokenizer.pad_token_id, left=True)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, stop_strings=list(stop),
                             tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, do_sample=False, top_k=None)
        texts = [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
        for s in stop:
            texts = [t.split(s)[0] for t in texts]
        return texts

    return map_batches(batch, sorted(range(len(prompts)), key=lambda i: -len(encoded[i])), batch_size)


def counting_reads(read, reads):
    """read (evaluate.read_prefixes), wrapped to add the prompt tokens each batch reads to reads[0]: each shared
    prefix once and every row's tail, as read_prefixes reads them (all of every row where none is shared)."""
    def wrapped(model, rows, heads, **kw):
        if any(heads):
            heads_ = evaluate.own_heads(rows, heads)
            reads[0] += sum(len(p) for p in {tuple(r[:h]) for h, r in zip(heads_, rows)})
            reads[0] += sum(len(r) - h for h, r in zip(heads_, rows))
        else:
            reads[0] += sum(map(len, rows))
        return read(model, rows, heads, **kw)
    return wrapped


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 questions, SmolLM2, English: checks the script runs")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--languages", nargs="+", default=["en", "th"])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", default=None, help="default benchmarks/results_generate.json (--quick: none)")
    parser.add_argument("--results-md", default=None, help="append here; default benchmarks/RESULTS.md (--quick: none)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.languages, args.questions = args.models[:1], args.languages[:1], 4
    else:
        args.json = args.json or str(ROOT / "benchmarks" / "results_generate.json")
        args.results_md = args.results_md or str(ROOT / "benchmarks" / "RESULTS.md")
    task = data.load_task("xquad")
    read_prefixes = evaluate.read_prefixes
    out = dict(date=datetime.date.today().isoformat(), command="python benchmarks/bench_generate.py " + " ".join(sys.argv[1:]),
               cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
               load_before=os.getloadavg()[0], max_new_tokens=task.max_new_tokens, stop=list(task.stop),
               batch_size=args.batch_size, rows=[])
    print(f"{out['cpu']}, {out['threads']} threads, load {out['load_before']:.1f}"
          + (" | --quick: not a measurement" if args.quick else ""), flush=True)
    for name in args.models:
        model, tokenizer = models.load_model(name, dtype=torch.float32)
        model.eval()
        for lang in args.languages:
            examples = task.eval_examples(lang, args.data_dir, subset="articles_32_47", n=None, seed=0)[:args.questions]
            prompts = [task.prompt(ex) for ex in examples]
            answers, seconds, read = {}, {}, {}
            for way, fn in [("transformers", lambda: transformers_generate(model, tokenizer, prompts, args.batch_size,
                                                                          task.max_new_tokens, task.stop)),
                            ("shared", lambda: evaluate.generate(model, tokenizer, prompts, batch_size=args.batch_size,
                                                                 device="cpu", max_new_tokens=task.max_new_tokens,
                                                                 stop=task.stop)),
                            ("whole", lambda: evaluate.generate(model, tokenizer, prompts, batch_size=args.batch_size,
                                                                device="cpu", max_new_tokens=task.max_new_tokens,
                                                                stop=task.stop, share=False))]:
                reads = [0]
                evaluate.read_prefixes = counting_reads(read_prefixes, reads)
                start = time.perf_counter()
                try:
                    answers[way] = fn()
                finally:
                    seconds[way] = time.perf_counter() - start
                    evaluate.read_prefixes = read_prefixes
                read[way] = reads[0]
            total = sum(len(data.prompt_ids(tokenizer, p)) for p in prompts)
            row = dict(model=name, language=lang, questions=len(prompts), prompt_tokens=total, tokens_read_shared=read["shared"], tokens_read_whole=read["whole"],
                       **{f"{w}_s": s for w, s in seconds.items()},
                       shared_vs_transformers=seconds["shared"] / seconds["transformers"],
                       whole_vs_transformers=seconds["whole"] / seconds["transformers"],
                       same_shared=sum(a == b for a, b in zip(answers["shared"], answers["transformers"])),
                       same_whole=sum(a == b for a, b in zip(answers["whole"], answers["transformers"])))
            out["rows"].append(row)
            print(f"{name} {lang}: {len(prompts)} questions, prompt tokens {total} (shared reads {read['shared']}); "
                  f"transformers {seconds['transformers']:.1f} s, shared {seconds['shared']:.1f} s "
                  f"({row['shared_vs_transformers']:.2f}x), whole {seconds['whole']:.1f} s "
                  f"({row['whole_vs_transformers']:.2f}x); answers identical to transformers': shared "
                  f"{row['same_shared']}/{len(prompts)}, whole {row['same_whole']}/{len(prompts)}", flush=True)
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.results_md:
        lines = [f"\n## XQuAD generation: passages read once ({out['date']})\n",
                 f"`{out['command']}` on {out['cpu']} ({out['threads']} torch threads), torch {out['torch']}, fp32, "
                 f"batches of {out['batch_size']}, stop {out['stop']!r}, max_new_tokens {out['max_new_tokens']}; load "
                 f"average {out['load_before']:.1f} before, {out['load_after']:.1f} after. One run each way, in the "
                 f"order transformers, shared, whole. Ratios below 1: faster than transformers' generate().\n",
                 "| model | language | questions | prompt tokens | read (shared) | transformers s | shared s | "
                 "whole s | shared/transformers | whole/transformers | identical answers (shared, whole) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['language']} | {r['questions']} | {r['prompt_tokens']} | {r['tokens_read_shared']} "
                  f"| {r['transformers_s']:.1f} | {r['shared_s']:.1f} | {r['whole_s']:.1f} | "
                  f"{r['shared_vs_transformers']:.2f} | {r['whole_vs_transformers']:.2f} | {r['same_shared']}, "
                  f"{r['same_whole']} of {r['questions']} |" for r in out["rows"]]
        with open(args.results_md, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
