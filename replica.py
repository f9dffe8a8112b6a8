"""The paper's comparison at small scale, with real weights: one command trains and evaluates it.

    python replica.py                          # smollm2-135m and gemma3-270m, every task and method
    python replica.py --models smollm2 --tasks xnli belebele
    python replica.py --report-only            # rebuild the tables from finished runs
    python replica.py --models smollm2 --tasks xquad --set eval_samples=16   # override a field everywhere

For each model (SmolLM2-135M-Instruct, Gemma 3 270M), task (XNLI: all 15 languages; XQuAD: train
on English articles 0-31, test articles 32-47 in all 12 languages; Belebele: the languages
../shared/data holds) and method (base, soft prompt, prefix tuning, LLaMA-Adapter, LoRA r=4), it
runs the runs.yaml entry `<method>_<task>_<model>`: `train.py --resume` unless the adapter is
finished, then `evaluate.py` (which resumes per language). Every method is trained on English only.

Writes to --out (default results/replica/): report.md (per-language tables, groups by script and
family, PNG bars and heatmaps, from report.py), headline.md and headline.json (per model and
task: average, English, non-English average and its change against the base model, per method),
and timings.json (wall seconds of each train and evaluate command, summed over resumes, with the device).
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import config as C
import report

ROOT = Path(__file__).resolve().parent
MODELS = ("smollm2", "gemma3")
TASKS = ("xnli", "xquad", "belebele")
METHODS = ("base", "soft_prompt", "prefix", "adapter", "lora")
ENGLISH = {"xnli": "en", "xquad": "en", "belebele": "eng_Latn"}


def run_names(models, tasks):
    return [f"{m}_{t}_{model}" for model in models for t in tasks for m in METHODS]


def device_name():
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def step(command, timings, key):
    """Run one command; add its wall time to the key's (a rerun that resumes adds its part to the
    first run's, not replaces it). A failure stops the replica with the command shown."""
    print("+", " ".join(command), flush=True)
    start = time.time()
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}  (fix it, then rerun replica.py: finished work is kept)")
    timings[key] = round(timings.get(key, 0.0) + time.time() - start, 1)  # summed over resumes


def run_one(name, cfg, timings, overrides):
    if cfg.method != "base" and not (cfg.run_dir / "adapter" / "adapter_config.json").is_file():
        step([sys.executable, "train.py", "--run", name, "--resume", *overrides], timings, f"{name}/train")
    step([sys.executable, "evaluate.py", "--run", name, *overrides] + ([] if cfg.method == "base" else ["--no-base"]),
         timings, f"{name}/evaluate")


def parse_sets(items):
    """["eval_samples=16", ...] -> (["--eval_samples", "16", ...], {field: value}); fields are checked
    by config's own parser, so a bad name or value fails here, before any work."""
    args, values = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in C.FIELDS:
            raise SystemExit(f"--set takes FIELD=VALUE with a field of runs.yaml, got {item!r}")
        args += [f"--{key}", value]
        values[key] = C._parse_value(value, C.FIELDS[key].type)
    return args, values


def per_example(runs_dir, name, row, metric):
    """{(lang, example id): score} of one row of a run, from its eval/<row>/<lang>.json files: the
    metric where each prediction has it (XQuAD F1), else 100 x correct (accuracy)."""
    out = {}
    for path in sorted((Path(runs_dir) / name / "eval" / row).glob("*.json")):
        record = json.loads(path.read_text())
        for p in record["predictions"]:
            value = p[metric] if metric in p else 100.0 * p["correct"]
            out[(record["language"], p["id"])] = value
    return out


def paired_se(ours, base, english):
    """Standard error of the mean non-English difference over the examples both runs scored (the
    same questions, so the noise of which questions were drawn cancels); None under 2 examples."""
    diffs = [ours[k] - base[k] for k in ours if k in base and k[0] != english]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    return (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5


def headline(names, runs_dir):
    """{model: {task: {method: {avg, en, non_en, non_en_vs_base, non_en_vs_base_se}}}} from
    finished runs; the standard error is of the paired per-example difference to the base run."""
    out, examples = {}, {}
    for name in names:
        results = report.load_results(runs_dir, name)
        if results is None:
            continue
        method, task, model = name.split("_" + results["task"] + "_")[0], results["task"], name.rsplit("_", 1)[1]
        row = "base" if method == "base" else report.trained_row(results)
        values = report.scores(results, row)
        english = ENGLISH[task]
        others = [v for lang, v in values.items() if lang != english]
        out.setdefault(model, {}).setdefault(task, {})[method] = dict(
            metric=results["metric"], avg=report.mean(values.values()), en=values.get(english),
            non_en=report.mean(others), n_languages=len(values))
        examples[model, task, method] = per_example(runs_dir, name, row, results["metric"])
    for model, tasks in out.items():
        for task, methods in tasks.items():
            base = methods.get("base", {}).get("non_en")
            for method, row in methods.items():
                row["non_en_vs_base"] = None if base is None or row["non_en"] is None else row["non_en"] - base
                row["non_en_vs_base_se"] = None if base is None else paired_se(
                    examples[model, task, method], examples[model, task, "base"], ENGLISH[task])
    return out


def render_headline(table):
    fmt = report.fmt_number
    lines = []
    for model, tasks in table.items():
        for task, methods in tasks.items():
            metric = next(iter(methods.values()))["metric"]
            lines += [f"### {model}, {task} ({metric}, {next(iter(methods.values()))['n_languages']} languages)", "",
                      report.markdown_table(
                          ["method", "avg", "English", "non-English avg", "non-English vs base (± s.e.)"],
                          [[report.METHOD_NAMES.get(m, m), fmt(r["avg"]), fmt(r["en"]), fmt(r["non_en"]),
                            change(r)] for m, r in methods.items()]), ""]
    return "\n".join(lines)


def change(row):
    """"+6.9 ± 2.3": the non-English change against the base model, with the paired standard error."""
    if row["non_en_vs_base"] is None:
        return ""
    se = row.get("non_en_vs_base_se")
    return f"{row['non_en_vs_base']:+.1f}" + ("" if not se else f" ± {se:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--out", default=str(ROOT / "results" / "replica"))
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from finished runs")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override a runs.yaml field in every run, e.g. eval_samples=16 (CPU-sized)")
    args = parser.parse_args(argv)
    overrides, values = parse_sets(args.set)
    names = run_names(args.models, args.tasks)
    configs = {name: C.get_run(name, values) for name in names}  # every entry checked before any work starts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if not args.report_only:
        timings["device"] = device_name()
        for name in names:
            run_one(name, configs[name], timings, overrides)
            C.write_json_atomic(timings_path, timings)
    runs_dir = configs[names[0]].run_dir.parent
    runs = report.Collector(runs_dir)
    tables = report.tables_for_runs(names, runs, report.load_paper())
    command = "python replica.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report.build_report(tables, runs, out / "report.md", "Small-scale replica: per-language results", command)
    table = headline(names, runs_dir)
    C.write_json_atomic(out / "headline.json", table)
    C.write_text_atomic(out / "headline.md", f"# Small-scale replica: headline\n\nWritten by `{command}` on "
                        f"{timings.get('device', 'an unrecorded device')}.\n\n" + render_headline(table))
    print(f"wrote {out / 'report.md'} and {out / 'headline.md'}")


if __name__ == "__main__":
    main()
