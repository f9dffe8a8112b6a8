"""Choice scoring on the CPU (XNLI, Belebele): this tree's evaluate.choice_logprobs against a git
revision's, on the same examples, timed in alternation.

    python benchmarks/bench_choices.py --against 438ab87     # ~15 min on 2 quiet cores
    python benchmarks/bench_choices.py --against HEAD --quick   # 8 rows, one run each: a dry run

For each replica run named (runs.yaml: model, task, held-out subset, eval_batch_size; fp32), the
first --rows held-out examples of each language (default English and one other) are scored by
this tree and by --against (checked out into a temporary git worktree), each in its own process,
in the order A B B A (--repeats times): only choice_logprobs is timed, not loading. Prints the median
seconds of each, this/against, how many examples pick the same choice and the largest score
difference. Writes --json and appends to --results-md (--quick writes neither unless named).

Against 438ab87 (2026-12-05): the LM head once per batch instead of once per row (token_logprobs).
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args):
    """Scores in the tree at args.child, prints one JSON line: seconds and scores."""
    sys.path.insert(0, args.child)
    os.chdir(args.child)
    import torch
    import config
    import data
    import evaluate
    import models
    cfg = config.get_run(args.run)
    task = data.load_task(cfg.task)
    model, tokenizer = models.load_model(cfg.model, dtype=torch.float32)
    model.eval()
    examples = task.eval_examples(args.lang, args.data_dir, subset=cfg.eval_subset, n=None, seed=0)[:args.rows]
    scored = [task.scored(ex, cfg.prompt_style) for ex in examples]
    start = time.perf_counter()
    scores = evaluate.choice_logprobs(model, tokenizer, [p for p, _ in scored], [c for _, c in scored],
                                      batch_size=cfg.eval_batch_size, device="cpu")
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps(dict(seconds=seconds, scores=scores, threads=torch.get_num_threads(),
                                      torch=torch.__version__, model=cfg.model, task=cfg.task,
                                      batch_size=cfg.eval_batch_size)), flush=True)


def measure(tree, args, run, lang):
    cmd = [sys.executable, __file__, "--child", str(tree), "--run", run, "--lang", lang, "--rows", str(args.rows),
           "--data-dir", args.data_dir]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{tree} {run} {lang} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="the git revision to compare with (a commit, a tag, HEAD)")
    parser.add_argument("--quick", action="store_true", help="8 rows, one run each, first run and language")
    parser.add_argument("--runs", nargs="+", default=["base_xnli_gemma3", "base_belebele_gemma3", "base_xnli_smollm2"])
    parser.add_argument("--languages", nargs="+", default=None,
                        help="default: each run's first language and one other (th for XNLI)")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", default=None, help="default benchmarks/results_choices.json (--quick: none)")
    parser.add_argument("--results-md", default=None, help="append here; default benchmarks/RESULTS.md (--quick: none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--lang", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.against:
        parser.error("--against REVISION is required: the code to compare this tree's choice scoring with")
    if args.quick:
        args.runs, args.rows, args.repeats = args.runs[:1], 8, 1
    else:
        args.json = args.json or str(ROOT / "benchmarks" / "results_choices.json")
        args.results_md = args.results_md or str(ROOT / "benchmarks" / "RESULTS.md")
    args.data_dir = str(Path(args.data_dir).resolve())
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against], capture_output=True, text=True)
    if rev.returncode:
        parser.error(f"--against {args.against!r} is not a revision of {ROOT}: {rev.stderr.strip()}")
    against = rev.stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    from bench_cpu import cpu_name
    out = dict(date=datetime.date.today().isoformat(), command="python benchmarks/bench_choices.py " + " ".join(sys.argv[1:]),
               cpu=cpu_name(), this=head + (" with uncommitted changes" if dirty else ""), against=against,
               load_before=os.getloadavg()[0], repeats=args.repeats, rows=[])
    print(f"{out['cpu']}, load {out['load_before']:.1f}; this tree ({out['this']}) against {against}"
          + (" | --quick: not a measurement" if args.quick else ""), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "against"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), against], check=True)
        try:
            for run in args.runs:
                own = _languages(run)
                languages = args.languages or [own[0], "th" if "xnli" in run else own[-1]]
                for lang in languages[:1] if args.quick else languages:
                    got = {"this": [], "against": []}
                    for way in (["this", "against", "against", "this"] * args.repeats)[:2 * args.repeats]:
                        got[way].append(measure(ROOT if way == "this" else tree, args, run, lang))
                    a, b = got["this"][0]["scores"], got["against"][0]["scores"]
                    pick = lambda s: [max(range(len(x)), key=x.__getitem__) for x in s]  # noqa: E731
                    this_s = statistics.median(r["seconds"] for r in got["this"])
                    against_s = statistics.median(r["seconds"] for r in got["against"])
                    row = dict(run=run, language=lang, examples=len(a), batch_size=got["this"][0]["batch_size"],
                               threads=got["this"][0]["threads"], this_s=this_s, against_s=against_s,
                               ratio=this_s / against_s, seconds={k: [r["seconds"] for r in v] for k, v in got.items()},
                               same_choice=sum(x == y for x, y in zip(pick(a), pick(b))),
                               max_score_diff=max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q)))
                    out["rows"].append(row)
                    print(f"{run} {lang}: {len(a)} examples; this {this_s:.1f} s, {against} {against_s:.1f} s "
                          f"({row['ratio']:.2f}x); same choice {row['same_choice']}/{len(a)}, largest score "
                          f"difference {row['max_score_diff']:.1e}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.results_md:
        lines = [f"\n## Choice scoring against {against} ({out['date']})\n",
                 f"`{out['command']}` on {out['cpu']}, this tree {out['this']}; fp32, each run's eval_batch_size, "
                 f"{out['rows'][0]['threads']} torch threads; load average {out['load_before']:.1f} before, "
                 f"{out['load_after']:.1f} after. Medians of {out['repeats']} processes each way, in alternation. "
                 f"Below 1: this tree is faster.\n",
                 f"| run | language | examples | this s | {against} s | this/{against} | same choice | largest score difference |",
                 "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['language']} | {r['examples']} | {r['this_s']:.1f} | {r['against_s']:.1f} | "
                  f"{r['ratio']:.2f} | {r['same_choice']} of {r['examples']} | {r['max_score_diff']:.1e} |"
                  for r in out["rows"]]
        with open(args.results_md, "a") as f:
            f.write("\n".join(lines) + "\n")


def _languages(run):
    sys.path.insert(0, str(ROOT))
    import config
    import data
    cfg = config.get_run(run)
    return cfg.eval_languages or data.load_task(cfg.task).languages


if __name__ == "__main__":
    main()
