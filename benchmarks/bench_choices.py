"""Choice scoring on the CPU: contexts that begin alike reading their common prefix once, against
each context whole.

    python benchmarks/bench_choices.py                  # ~10 min on 2 quiet cores
    python benchmarks/bench_choices.py --quick          # 8 rows, one run, one language: a dry run

For each replica run named (runs.yaml: model, task, held-out subset, eval_batch_size, fp32), the
first --rows held-out examples of each of --languages (in the file's order, so an XNLI premise's
three hypotheses, or a Belebele passage's two questions, come together, as in a whole evaluation)
are scored two ways by evaluate.choice_logprobs, in alternation (ABBA), --repeats times each:
- shared: a batch's common prefix read once (evaluate.shared_prefixes, read_prefixes);
- whole: share=False, every context read whole, as choice scoring did before 2026-12-05.
Prints the median seconds of each and shared/whole, the context tokens each reads, how many
examples pick the same choice, and the largest score difference. Writes --json and appends to
--results-md (--quick writes neither unless named).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
from bench_cpu import cpu_name  # noqa: E402
from bench_generate import counting_reads  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 rows, one run each way, first run and language")
    parser.add_argument("--runs", nargs="+", default=["base_xnli_gemma3", "base_belebele_gemma3", "base_xnli_smollm2"])
    parser.add_argument("--languages", nargs="+", default=None,
                        help="default: English and one other of each run's eval_languages (th for XNLI)")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="default benchmarks/results_choices.json (--quick: none)")
    parser.add_argument("--results-md", default=None, help="append here; default benchmarks/RESULTS.md (--quick: none)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rows, args.repeats = args.runs[:1], 8, 1
    else:
        args.json = args.json or str(ROOT / "benchmarks" / "results_choices.json")
        args.results_md = args.results_md or str(ROOT / "benchmarks" / "RESULTS.md")
    out = dict(date=datetime.date.today().isoformat(), command="python benchmarks/bench_choices.py " + " ".join(sys.argv[1:]),
               cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
               load_before=os.getloadavg()[0], repeats=args.repeats, rows=[])
    print(f"{out['cpu']}, {out['threads']} threads, load {out['load_before']:.1f}"
          + (" | --quick: not a measurement" if args.quick else ""), flush=True)
    read_prefixes = evaluate.read_prefixes
    for run in args.runs:
        cfg = config.get_run(run)
        task = data.load_task(cfg.task)
        model, tokenizer = models.load_model(cfg.model, dtype=torch.float32)
        model.eval()
        own = cfg.eval_languages or task.languages
        languages = args.languages or [own[0], "th" if cfg.task == "xnli" else own[-1]]
        for lang in languages[:1] if args.quick else languages:
            examples = task.eval_examples(lang, cfg.data_dir, subset=cfg.eval_subset, n=None, seed=0)[:args.rows]
            scored = [task.scored(ex, cfg.prompt_style) for ex in examples]
            prompts, choices = [p for p, _ in scored], [c for _, c in scored]
            seconds, scores, read = {"shared": [], "whole": []}, {}, {}
            for way in (["shared", "whole", "whole", "shared"] * args.repeats)[:2 * args.repeats]:
                reads = [0]
                evaluate.read_prefixes = counting_reads(read_prefixes, reads)
                start = time.perf_counter()
                try:
                    scores[way] = evaluate.choice_logprobs(model, tokenizer, prompts, choices, device="cpu",
                                                           batch_size=cfg.eval_batch_size, share=way == "shared")
                finally:
                    seconds[way].append(time.perf_counter() - start)
                    evaluate.read_prefixes = read_prefixes
                read[way] = reads[0]
            pick = {w: [max(range(len(s)), key=s.__getitem__) for s in scores[w]] for w in scores}
            diff = max(abs(a - b) for x, y in zip(scores["shared"], scores["whole"]) for a, b in zip(x, y))
            s, w = statistics.median(seconds["shared"]), statistics.median(seconds["whole"])
            row = dict(run=run, model=cfg.model, task=cfg.task, language=lang, examples=len(prompts),
                       batch_size=cfg.eval_batch_size, tokens_read_shared=read["shared"], tokens_read_whole=read["whole"],
                       shared_s=s, whole_s=w, shared_vs_whole=s / w, seconds=seconds,
                       same_choice=sum(a == b for a, b in zip(pick["shared"], pick["whole"])), max_score_diff=diff)
            out["rows"].append(row)
            print(f"{run} {lang}: {len(prompts)} examples, context tokens read {read['whole']} whole, {read['shared']} "
                  f"shared; whole {w:.1f} s, shared {s:.1f} s ({s / w:.2f}x); same choice {row['same_choice']}/"
                  f"{len(prompts)}, largest score difference {diff:.1e}", flush=True)
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.results_md:
        lines = [f"\n## Choice scoring: common prefixes read once ({out['date']})\n",
                 f"`{out['command']}` on {out['cpu']} ({out['threads']} torch threads), torch {out['torch']}, fp32, "
                 f"each run's eval_batch_size; load average {out['load_before']:.1f} before, {out['load_after']:.1f} "
                 f"after. Medians of {out['repeats']} runs each way, in alternation. Below 1: shared is faster.\n",
                 "| run | language | examples | context tokens (whole, shared) | whole s | shared s | shared/whole | "
                 "same choice | largest score difference |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['language']} | {r['examples']} | {r['tokens_read_whole']}, {r['tokens_read_shared']} "
                  f"| {r['whole_s']:.1f} | {r['shared_s']:.1f} | {r['shared_vs_whole']:.2f} | {r['same_choice']} of "
                  f"{r['examples']} | {r['max_score_diff']:.1e} |" for r in out["rows"]]
        with open(args.results_md, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
