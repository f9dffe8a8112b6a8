"""How much a paired difference moves with the drawn sample, drawing rows one at a time or whole
groups (config eval_draw), from two runs that scored every row: each draw of --n rows per language
takes the runs' per-example scores on those rows, as evaluate.py would have scored them.

    python benchmarks/draw_spread.py results/replica/runs base_xnli_gemma3 soft_prompt_xnli_gemma3 --n 400

Prints, per way of drawing, the sd of the non-English difference across --draws seeds (the spread a
reader would see between two evaluations of the same runs) and the mean paired s.e. report.compare
gives on one draw (cluster-robust by group), both in points.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import report  # noqa: E402
import stats  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir")
    parser.add_argument("base")
    parser.add_argument("other")
    parser.add_argument("--n", type=int, default=400, help="rows per language drawn")
    parser.add_argument("--draws", type=int, default=200, help="sample seeds")
    args = parser.parse_args(argv)
    a, b = (report.load_entry(args.runs_dir, name) for name in (args.base, args.other))
    report.check_same_examples(a, b, a["results"]["languages"])
    clusters = a["clusters"] or b["clusters"]
    english = data.load_task(a["results"]["task"]).train_lang
    others = [l for l in a["results"]["languages"] if l != english]
    ids = list(a["examples"][others[0]][0])
    rows = [dict(id=i, group=(clusters or {}).get(i)) for i in ids]
    print(f"{args.other} − {args.base}, non-English average of {len(others)} languages, {len(ids)} rows each; "
          f"{args.draws} draws of {args.n} rows")
    for draw in ("rows", "groups"):
        means, ses, sizes = [], [], []
        for seed in range(args.draws):
            keep = np.isin(ids, [r["id"] for r in data.sample(rows, args.n, seed, draw)])
            diffs = {l: (b["examples"][l][0][keep], b["examples"][l][1][keep] - a["examples"][l][1][keep]) for l in others}
            mean, se = stats.mean_and_se(diffs, others, clusters)
            means.append(mean), ses.append(se), sizes.append(int(keep.sum()))
        print(f"draw {draw:6s}: {min(sizes)}-{max(sizes)} rows; difference {statistics.mean(means):+.2f}, sd across "
              f"draws {statistics.stdev(means):.2f}, mean paired s.e. {statistics.mean(ses):.2f}")


if __name__ == "__main__":
    main()
