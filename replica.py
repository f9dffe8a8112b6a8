"""The paper's comparison at small scale, with real weights: one command trains and evaluates it.

    python replica.py                          # smollm2-135m and gemma3-270m, every task and method, seeds 0 1 2
    python replica.py --models smollm2 --tasks xnli belebele
    python replica.py --models gemma3 --tasks xquad --seeds 0 --methods base lora   # a part of it
    python replica.py --report-only            # rebuild the tables from finished runs
    python replica.py --models gemma3 --plan   # what is left of it, and hours at the rates measured so far
    python replica.py --models smollm2 --tasks xquad --set eval_samples=16   # override a field everywhere

For each model (SmolLM2-135M-Instruct, Gemma 3 270M), task (XNLI: all 15 languages; XQuAD: train
on English articles 0-31, test articles 32-47 in all 12 languages; Belebele: the languages
../shared/data holds) and method (base, soft prompt, prefix tuning, LLaMA-Adapter, LoRA r=4), it
runs the runs.yaml entry `<method>_<task>_<model>`: `train.py --resume` unless the adapter is
finished, then `evaluate.py` (which resumes per language) unless results.json is finished and
current. Every method is trained on English only.

Seeds: the base model is evaluated once (its scores do not depend on a training seed); each trained
method runs once per --seeds value. Seed 0 is the runs.yaml entry as it stands (<out_dir>/<name>);
seed s > 0 is the same entry with `--seed s --out_dir <its out_dir>/seed<s>` (<out_dir>/seed<s>/<name>),
so folders never collide. The entries' out_dir is results/replica/runs, committed (checkpoints and logs
aside): each session runs on a new machine, and resumes from the finished runs and languages that
landed. They compute in float32 on every machine, so runs made on CPUs with and without native bf16
pair with each other and with the base model. eval_seed stays the entry's (0) for every seed: all seeds score the same
examples, and their per-example scores pair with the base model's.

Writes to --out (default results/replica/), always over every model, task, method and seed that has
finished (--models, --tasks, --methods and --seeds choose the work, not what is reported):
- headline.md / headline.json: per model and task, from report.compare of the base run against each
  method pooled over its seeds: avg, English and non-English average per method as the mean over
  seeds with the seed sd and the number of seeds, and the non-English difference to the base model
  with its paired s.e. and paired bootstrap 95% interval. A non-English s.e. over TARGET_SE (1.5 F1
  XQuAD, 2 points of accuracy XNLI and Belebele) is marked: the evaluation was too small to tell.
  Then the paper's findings, each marked per model and task by `findings` (rules below).
- compare_<task>_<model>.md / .json / _diff_bars.png: report.compare's per-language table and plot.
- report.md: per-language tables, groups by script and family, PNG bars and heatmaps (report.py),
  of seed 0 of each trained method.
- timings.json: wall seconds of each train and evaluate command (key `<run folder>/train`, e.g.
  `seed1/lora_xnli_smollm2/train`), summed over resumes, with the devices that ran them; a file from
  before this protocol is kept inside it under "before".

The findings' rules (per model and task; "CI" is the 95% paired bootstrap interval over examples of
a difference, per example the mean over each side's seeds, as report.compare computes it):
- prefix_over_lora, "prefix methods ahead of LoRA on transfer": the better of prefix tuning and
  LLaMA-Adapter on the non-English average (by its pooled mean) minus LoRA, on the non-English
  average. Holds if the CI is above 0, does not hold if below 0, cannot tell if it spans 0. Taking
  the better of two before testing favours "holds" a little; both differences are shown.
- soft_prompt_low_resource, "soft prompts strong on low-resource languages" (the paper: comparable to
  or better than the other prefix methods there, on Belebele): on the task's low-resource languages
  (data.LANGUAGES "resource"), soft prompt minus base, and soft prompt minus the better of prefix
  tuning and LLaMA-Adapter there. Holds if the first CI is above 0 and the second is not below 0;
  does not hold if either CI is below 0; otherwise cannot tell. Cannot tell where the task has no
  low-resource language here (XQuAD's 12 are all high-resource, and so are eng and deu of Belebele).
- lora_degrades, "LoRA degrading non-English": LoRA minus base on the non-English average. Holds if
  the CI is below 0, does not hold if above 0, cannot tell if it spans 0.
Every verdict needs the runs it compares; a missing one makes it "cannot tell", saying which. Each
comparison is made on the headline's languages (those every finished method of the model and task
scored); where English is not among them, every language counts as non-English. Where runs scored
samples of different sizes (one grown to a larger eval_samples, the rest not yet), each comparison
is made on the examples all of its runs scored (report.compare's common=True), and the headline and
the finding say how many. Each "CI" above is
taken twice: the paired bootstrap interval over examples, and the interval over examples and training
seeds (stats.with_seeds: the examples' s.e. and each trained side's seed sd/√n in quadrature, a
Student t interval), and a verdict holds (or does not) only where both agree; elsewhere it is "cannot
tell". Where a method compared has one seed, its spread across seeds is unmeasured: the verdict is
then over examples only and marked provisional. With 2 seeds the verdict counts them but stays
provisional (that interval covers less than it says); it is final at 3 seeds of every method compared.
"""
import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import config as C
import data
import report
import stats

ROOT = Path(__file__).resolve().parent
MODELS = ("smollm2", "gemma3")
TASKS = ("xnli", "xquad", "belebele")
METHODS = ("base", "soft_prompt", "prefix", "adapter", "lora")
SEEDS = (0, 1, 2)
ENGLISH = {"xnli": "en", "xquad": "en", "belebele": "eng_Latn"}
TARGET_SE = {"xnli": 2.0, "xquad": 1.5, "belebele": 2.0}  # issue 15: the non-English paired s.e. to reach
PREFIX_METHODS = ("prefix", "adapter")  # the paper's prefix methods that it ranks ahead of LoRA
FULL_SEEDS = len(SEEDS)  # seeds per trained method (issue 15) before a verdict is final
FINDINGS = {"prefix_over_lora": "Prefix methods ahead of LoRA on transfer",
            "soft_prompt_low_resource": "Soft prompts strong on low-resource languages",
            "lora_degrades": "LoRA degrading non-English"}
HOLDS, DOES_NOT_HOLD, CANNOT_TELL = "holds", "does not hold", "cannot tell at this scale"
# timings.json's protocol: times recorded before it (other sizes, one seed) are kept apart under "before"
PROTOCOL = "issue 15: runs.yaml sizes, seeds"


def run_names(models, tasks, methods=METHODS):
    return [f"{m}_{t}_{model}" for model in models for t in tasks for m in methods]


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


def parse_sets(items):
    """["eval_samples=16", ...] -> (["--eval_samples", "16", ...], {field: value}); fields are checked
    by config's own parser, so a bad name or value fails here, before any work. `seed` is --seeds'."""
    args, values = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in C.FIELDS:
            raise SystemExit(f"--set takes FIELD=VALUE with a field of runs.yaml, got {item!r}")
        if key == "seed":
            raise SystemExit("--set seed=...: choose training seeds with --seeds (each gets its own folder)")
        args += [f"--{key}", value]
        values[key] = C._parse_value(value, C.FIELDS[key].type)
    return args, values


def seed_runs(name, values, seeds):
    """[(run folder relative to the runs folder, config, extra command-line args)] of one entry: the
    base model once (seed 0's folder), a trained method once per seed, seed s > 0 in <out_dir>/seed<s>
    (absolute, so no working directory can move it)."""
    cfg = C.get_run(name, values)
    if cfg.method == "base":
        return [(name, cfg, [])]
    if cfg.seed != 0:
        raise SystemExit(f"{name}: runs.yaml gives seed {cfg.seed}; replica.py keeps seed 0 in <out_dir>/<name> and "
                         f"chooses the others with --seeds, so its entries leave seed at 0")
    out = []
    for seed in seeds:
        if seed == 0:
            out.append((name, cfg, []))
            continue
        out_dir = str(Path(cfg.out_dir) / f"seed{seed}")
        out.append((f"seed{seed}/{name}", C.get_run(name, dict(values, seed=seed, out_dir=out_dir)),
                    ["--seed", str(seed), "--out_dir", out_dir]))
    return out


def evaluated(cfg) -> bool:
    """Whether the run's results.json is finished and current: today's evaluation settings
    (config.EVAL_SETTINGS), the dtype this machine computes in, every language, and the adapter now
    on disk. evaluate.py would then only load the model to find nothing to do, a quarter hour over
    ~80 runs on a CPU; in doubt it runs."""
    results = report.load_results(cfg.out_dir, cfg.name)
    if results is None or results.get("dtype") != str(C.device_and_dtype(cfg)[1]).removeprefix("torch."):
        return False
    now, then = dataclasses.asdict(cfg), results.get("config", {})
    languages = cfg.eval_languages or list(data.load_task(cfg.task).languages)
    row = "base" if cfg.method == "base" else cfg.method
    if (any(C.recorded(then, k) != now[k] for k in C.EVAL_SETTINGS) or results.get("languages") != languages
            or set(results["rows"].get(row, {})) != set(languages)
            or results.get("fit_languages") != (languages if cfg.eval_fit == "subset" else None)):
        return False
    adapter = cfg.run_dir / "adapter" / "adapter.safetensors"
    return cfg.method == "base" or (adapter.is_file() and results.get("adapter_sha256") == data.file_sha256(adapter))


def run_one(cfg, args, timings, key, overwrite=False):
    if cfg.method != "base" and not (cfg.run_dir / "adapter" / "adapter_config.json").is_file():
        step([sys.executable, "train.py", "--run", cfg.name, "--resume", *args], timings, f"{key}/train")
    if evaluated(cfg):
        print(f"finished: {key}")
        return
    step([sys.executable, "evaluate.py", "--run", cfg.name, *args] + ([] if cfg.method == "base" else ["--no-base"])
         + (["--overwrite"] if overwrite else []), timings, f"{key}/evaluate")


# --- what is left, and how long it should take (--plan) ------------------------------------------

def _task_model(folder):
    """("xquad", "gemma3") of a run folder `[seed<s>/]<method>_<task>_<model>`, or None."""
    parts = Path(folder).name.rsplit("_", 2)
    return (parts[1], parts[2]) if len(parts) == 3 and parts[1] in TASKS and parts[2] in MODELS else None


def measured(runs_dir, timings):
    """Seconds measured on finished work, {(task, model): {"train": [...], <language>: [...]}}: training
    from timings.json (summed over resumes), evaluation per language as seconds per example, from each
    cached language's own `seconds` and `n` under runs_dir, every method and seed of that model and
    task together."""
    out = {}
    for key, seconds in timings.items():
        folder, _, kind = key.rpartition("/")
        if kind == "train" and isinstance(seconds, (int, float)) and _task_model(folder):
            out.setdefault(_task_model(folder), {}).setdefault("train", []).append(seconds)
    for path in sorted(Path(runs_dir).glob("**/eval/*/*.json")):
        cell = _task_model(path.parents[2])
        if cell:
            result = json.loads(path.read_text())
            seconds, n = result.get("seconds"), result.get("n")
            if isinstance(seconds, (int, float)) and isinstance(n, int) and n > 0:
                out.setdefault(cell, {}).setdefault(path.stem, []).append(seconds / n)
    return out


_SIZES = {}


def sample_size(cfg, lang):
    """How many examples the run's evaluation scores in a language (eval_samples, or all it has)."""
    key = (cfg.task, cfg.data_dir, lang, cfg.eval_subset, cfg.eval_split)
    if key not in _SIZES:
        _SIZES[key] = len(data.load_task(cfg.task).eval_examples(lang, cfg.data_dir, subset=cfg.eval_subset,
                                                                 split=cfg.eval_split, n=None, seed=cfg.eval_seed))
    return _SIZES[key] if cfg.eval_samples is None else min(cfg.eval_samples, _SIZES[key])


def plan(jobs, runs_dir, timings):
    """[(run folder, what is done, seconds left or None, seconds at least)] per job, and the markdown
    table of them. Seconds left are medians of what finished on the same model and task (a median, as a
    run paused or resumed across sessions records its whole wall time): training if its adapter is
    missing, plus per language the examples its cached result lacks (all of them without one; those a
    smaller eval_samples left out, which evaluate.py adds: evaluate.grown) at the seconds per example
    measured there. None where some part of it has not been measured yet (training, say, on a task
    where only the base model ran); "at least" then sums the parts that have been. A cached language
    of as many examples counts as done even if evaluate.py would redo it under other settings."""
    seen = measured(runs_dir, timings)
    median = lambda values: float(np.median(values)) if values else None  # noqa: E731
    rows = []
    for key, cfg, _ in jobs:
        if evaluated(cfg):
            rows.append((key, "finished", 0.0, 0.0))
            continue
        times = seen.get(_task_model(key), {})
        languages = cfg.eval_languages or list(data.load_task(cfg.task).languages)
        row = "base" if cfg.method == "base" else cfg.method
        lacking, growing = {}, 0  # language: examples still to score; languages of a smaller sample
        for lang in languages:
            path = cfg.run_dir / "eval" / row / f"{lang}.json"
            cached = json.loads(path.read_text()).get("n", 0) if path.is_file() else 0
            if cached < (want := sample_size(cfg, lang)):
                lacking[lang] = want - cached
                growing += bool(cached)
        missing = list(lacking)
        trained = cfg.method == "base" or (cfg.run_dir / "adapter" / "adapter_config.json").is_file()
        rates = {lang: median(times.get(lang, [])) for lang in missing}
        parts = ([] if trained else [median(times.get("train", []))]) + \
            [None if rates[lang] is None else rates[lang] * lacking[lang] for lang in missing]
        floor = sum(part for part in parts if part is not None)
        done = ("" if trained else "to train, ") + f"{len(languages) - len(missing)}/{len(languages)} languages evaluated" + \
            (f" ({growing} of a smaller sample, to grow)" if growing else "")
        rows.append((key, done, None if None in parts else floor, floor))
    known = sum(left for _, _, left, _ in rows if left is not None)
    unknown = [floor for _, _, left, floor in rows if left is None]
    hours = lambda left, floor: f"{left / 3600:.1f}" if left is not None else f"≥ {floor / 3600:.1f}" if floor else "?"  # noqa: E731
    lines = [f"| `{key}` | {done} | {hours(left, floor)} |" for key, done, left, floor in rows]
    text = "\n".join(["| run | state | hours left |", "|---|---|---:|", *lines, "",
                      f"{sum(done != 'finished' for _, done, _, _ in rows)} of {len(rows)} runs to do: {known / 3600:.1f} h at the "
                      f"rates measured on {', '.join(timings.get('devices', [])) or 'no recorded device'}"
                      + (f", plus {len(unknown)} run(s) with a part not measured on their model and task yet "
                         f"(at least {sum(unknown) / 3600:.1f} h more for the parts that were)" if unknown else "")
                      + "."])
    return rows, text


# --- the headline: every method against the base model, seeds pooled ------------------------------

def _specs(runs_dir, model, task, seeds, notes):
    """{method: [report.compare specs of its finished seeds]}: runs whose per-example scores load;
    the others are named in `notes` with the reason."""
    out = {}
    for method in METHODS:
        name = f"{method}_{task}_{model}"
        for spec in [name] if method == "base" else [name if s == 0 else f"seed{s}/{name}" for s in seeds]:
            if report.load_results(runs_dir, spec) is None:
                continue
            try:
                report.load_entry(runs_dir, spec)
            except (ValueError, KeyError) as e:  # KeyError: a results.json evaluate.py did not write
                notes.append(f"`{spec}` left out: {e!s}")
                continue
            out.setdefault(method, []).append(spec)
    return out


def non_english_key(result, task):
    """report.compare's key of the non-English average: "non_en"; "avg" where English was not
    evaluated (every language is then non-English); None where English is the only language."""
    if ENGLISH[task] not in result["languages"]:
        return "avg"
    return "non_en" if "non_en" in result["members"] else None


def _cell(score, key):
    cell = score.get(key)
    return (None, None) if cell is None else (cell["mean"], cell["seed_sd"])


def headline(runs_dir, models=MODELS, tasks=TASKS, seeds=SEEDS, n_resamples=2000, level=0.95):
    """(table, comparisons). table: {model: {task: dict(metric, languages, n_examples, target_se,
    methods={method: row}, notes)}}, each row with avg, en, non_en (means over seeds of the per-seed
    scores) and their seed sd (`*_sd`, None with one seed), n_seeds, seeds, runs (report.compare
    specs), and against the base model non_en_vs_base, _se, _ci, se_over_target and _diff (the whole
    difference, with its counts over seeds: stats.with_seeds). comparisons:
    {(model, task): report.compare's result}. Runs not finished are left out; (model, task) pairs
    with fewer than two finished methods have no rows, only notes."""
    table, comparisons = {}, {}
    for model in models:
        for task in tasks:
            notes = []
            specs = _specs(runs_dir, model, task, seeds, notes)
            if len(specs) < 2:
                if specs or notes:
                    table.setdefault(model, {})[task] = dict(methods={}, notes=notes + [
                        "fewer than two finished methods: nothing to compare"])
                continue
            flat = [s for method in specs for s in specs[method]]
            method_of = {s: m for m, group in specs.items() for s in group}
            try:
                result = report.compare(runs_dir, flat, n_resamples=n_resamples, level=level, common=True)
            except ValueError as e:
                table.setdefault(model, {})[task] = dict(methods={}, notes=notes + [f"not compared: {e}"])
                continue
            groups = [method_of[e["runs"][0]] for e in result["entries"]]
            if len(set(groups)) < len(groups):  # report.seed_groups split a method: its seeds differ in more than seed
                split = sorted({m for m in groups if groups.count(m) > 1})
                table.setdefault(model, {})[task] = dict(methods={}, notes=notes + [
                    f"the seeds of {', '.join(split)} differ in more than their seed (see report.seed_groups); "
                    f"rerun them with the same settings"])
                continue
            english, base, non_en = ENGLISH[task], "base" in specs, non_english_key(result, task)
            methods = {}
            for method, entry in zip(groups, result["entries"]):
                scores = entry["scores"]
                row = dict(n_seeds=len(entry["runs"]), seeds=entry["seeds"], runs=entry["runs"])
                for key, field in (("avg", "avg"), (english, "en"), (non_en, "non_en")):
                    row[field], row[f"{field}_sd"] = _cell(scores, key)
                row["non_en_per_seed"] = scores.get(non_en, {}).get("per_seed")
                diff = entry.get("difference", {}).get(non_en) if base else None
                row.update(non_en_vs_base=diff and diff["mean"], non_en_vs_base_se=diff and diff["se"],
                           non_en_vs_base_ci=diff and diff["ci"], non_en_vs_base_diff=diff,
                           se_over_target=bool(diff and diff["se"] is not None and diff["se"] > TARGET_SE[task]))
                methods[method] = row
            comparisons[model, task] = result
            if result["narrowed"]:  # a run grown past the others (or short of them): compared on the shared ones
                notes.append(report.narrowed_text(result))
            table.setdefault(model, {})[task] = dict(
                metric=result["metric"], languages=result["languages"], n_examples=result["n_examples"],
                target_se=TARGET_SE[task], level=level, methods=methods,
                notes=notes + ([] if base else ["no finished base run: no change against the base model"]))
    return table, comparisons


# --- the paper's findings ----------------------------------------------------------------------

def verdict(ci, above_holds=True):
    """HOLDS / DOES_NOT_HOLD / CANNOT_TELL from a difference's interval: above 0 holds (below, with
    `above_holds` False), the other side does not hold, spanning 0 cannot tell."""
    if ci is None:
        return CANNOT_TELL
    low, high = ci
    if low > 0:
        return HOLDS if above_holds else DOES_NOT_HOLD
    if high < 0:
        return DOES_NOT_HOLD if above_holds else HOLDS
    return CANNOT_TELL


def judged(diff, rows, methods, above_holds=True):
    """(verdict, basis) of a difference of `methods`: by its interval over examples, and by its
    interval over examples and training seeds (stats.with_seeds) where every trained method of
    `methods` has 2 or more seeds; the two must agree, else "cannot tell". The verdict is final where
    every trained method has FULL_SEEDS seeds; otherwise `basis` calls it provisional: with one seed
    it is over examples only, and with 2 the seeds' interval covers less than it says (down to 88% for
    a nominal 95% in stats.with_seeds' simulation)."""
    trained = [m for m in methods if m != "base"]
    single = [report.METHOD_NAMES[m] for m in trained if rows[m]["n_seeds"] < 2]
    few = [f"{report.METHOD_NAMES[m]} has {rows[m]['n_seeds']}" for m in trained if rows[m]["n_seeds"] < FULL_SEEDS]
    marks = {verdict(diff["ci"], above_holds)} | ({verdict(diff.get("total_ci"), above_holds)} if not single else set())
    outcome = marks.pop() if len(marks) == 1 else CANNOT_TELL
    if single:
        return outcome, f"provisional, over examples only: {', '.join(single)} {'has' if len(single) == 1 else 'have'} one seed"
    if few:
        return outcome, f"over examples and seeds; provisional: {', '.join(few)} seeds, of {FULL_SEEDS}"
    return outcome, "over examples and seeds"


def _seeds_note(rows, methods):
    return "; seeds " + ", ".join(f"{report.METHOD_NAMES[m]} {rows[m]['n_seeds']}" for m in methods)


def _common_note(result):
    """" (on the 400 examples per language that every run compared scored)" where report.compare
    narrowed runs scored on different samples to the examples they share; "" where all scored the same."""
    counts = sorted(set(result["n_examples"].values()))
    return (f" (on the {'/'.join(map(str, counts))} examples per language that every run compared scored)"
            if result["narrowed"] else "")


def _seeds_numbers(name, diff):
    """"; LLaMA-Adapter − LoRA over examples and seeds ± 2.8 [-1.4, +12.4]"; "" where seeds are not counted."""
    seeds = stats.fmt_seeds(diff)
    return f"; {name} over examples and seeds {seeds}" if seeds else ""


def _too_small(mark, diffs, target):
    """A "cannot tell" says what would tell: the examples' s.e. over the task's target (the evaluation was
    too small), or the seeds' spread larger than the examples' s.e. (more seeds)."""
    if mark["verdict"] != CANNOT_TELL:
        return mark
    se = max((d["se"] for d in diffs if d.get("se") is not None), default=None)
    seed_se = max((d["seed_se"] for d in diffs if d.get("seed_se") is not None), default=None)
    if se is not None and se > target:
        mark["numbers"] += f"; s.e. {se:.1f} is over the target {target}: too few examples to tell"
    if seed_se is not None and se is not None and seed_se > se:
        mark["numbers"] += (f"; the spread across seeds (s.e. {seed_se:.1f}) is larger than across examples "
                            f"({se:.1f}): more seeds would tell more")
    return mark


def _missing(rows, needed):
    lacking = [report.METHOD_NAMES[m] for m in needed if m not in rows]
    return dict(verdict=CANNOT_TELL, numbers=f"not run yet: {', '.join(lacking)}") if lacking else None


def _no_non_english(cell):
    return dict(verdict=CANNOT_TELL, numbers=f"no non-English language evaluated ({', '.join(cell['languages'])})")


def prefix_over_lora(runs_dir, cell, task, n_resamples=2000):
    rows = cell["methods"]
    have = [m for m in PREFIX_METHODS if m in rows]
    if "lora" not in rows or not have:
        return _missing(rows, ("lora",) + PREFIX_METHODS)
    # on the headline's languages: the non-English average the better method is chosen by
    result = report.compare(runs_dir, rows["lora"]["runs"] + [s for m in have for s in rows[m]["runs"]],
                            n_resamples=n_resamples, level=cell["level"], languages=cell["languages"], common=True)
    key = non_english_key(result, task)
    if key is None:
        return _no_non_english(cell)
    diffs = {m: e["difference"][key] for m, e in zip(have, result["entries"][1:])}
    best = max(have, key=lambda m: rows[m]["non_en"])
    text = "; ".join(f"{report.METHOD_NAMES[m]} − LoRA non-English {stats.fmt_pm(d, signed=True, ci=True)}"
                     + _seeds_numbers(f"{report.METHOD_NAMES[m]} − LoRA", d) for m, d in diffs.items())
    outcome, basis = judged(diffs[best], rows, ("lora", best))
    mark = dict(verdict=outcome, basis=basis, best=best, differences=diffs,
                numbers=f"{text} (better: {report.METHOD_NAMES[best]}){_common_note(result)}"
                        f"{_seeds_note(rows, ('lora', *have))}")
    return _too_small(mark, [diffs[best]], cell["target_se"])


def soft_prompt_low_resource(runs_dir, cell, task, n_resamples=2000):
    rows = cell["methods"]
    low = [l for l in cell["languages"] if data.LANGUAGES.get(l, {}).get("resource") == "low"]
    if not low:
        return dict(verdict=CANNOT_TELL, numbers=f"no low-resource language among {task}'s {len(cell['languages'])} "
                                                 f"here ({', '.join(cell['languages'])}: all high-resource)")
    have = [m for m in PREFIX_METHODS if m in rows]
    missing = _missing(rows, ("base", "soft_prompt")) or (None if have else _missing(rows, PREFIX_METHODS))
    if missing:
        return missing
    # report.compare's "resource:low" average: the soft prompt and each prefix method against the base
    # model, then the soft prompt against the better prefix method; every side pooled over its seeds
    level = cell["level"]
    specs = rows["base"]["runs"] + [s for m in ("soft_prompt", *have) for s in rows[m]["runs"]]
    result = report.compare(runs_dir, specs, n_resamples=n_resamples, level=level, languages=cell["languages"],
                            common=True)
    key = next((k for k in ("resource:low", "avg") if sorted(result["members"].get(k, [])) == sorted(low)), None)
    if key is None:
        return dict(verdict=CANNOT_TELL,
                    numbers=f"the runs do not all score the low-resource languages {', '.join(low)}")
    gain, *prefixes = [e["difference"][key] for e in result["entries"][1:]]
    others = dict(zip(have, prefixes))
    best = max(have, key=lambda m: others[m]["mean"])
    paired = report.compare(runs_dir, rows[best]["runs"] + rows["soft_prompt"]["runs"], n_resamples=n_resamples,
                            level=level, languages=cell["languages"], common=True)
    against = paired["entries"][1]["difference"][key]
    first, _ = judged(gain, rows, ("base", "soft_prompt"))
    second, basis = judged(against, rows, ("soft_prompt", best))  # its basis covers both trained methods
    if DOES_NOT_HOLD in (first, second):
        outcome = DOES_NOT_HOLD
    else:  # not behind the better prefix method: held if the gain over the base model is shown
        outcome = first
    mark = dict(verdict=outcome, basis=basis, low_resource=low, vs_base=gain, vs_best_prefix=against, best=best,
                numbers=f"on {', '.join(low)}: soft prompt − base {stats.fmt_pm(gain, signed=True, ci=True)}"
                        f"{_seeds_numbers('soft prompt − base', gain)}{_common_note(result)}, "
                        f"soft prompt − {report.METHOD_NAMES[best]} {stats.fmt_pm(against, signed=True, ci=True)}"
                        f"{_seeds_numbers(f'soft prompt − {report.METHOD_NAMES[best]}', against)}"
                        f"{_common_note(paired)}{_seeds_note(rows, ('soft_prompt', best))}")
    return _too_small(mark, [gain, against], cell["target_se"])


def lora_degrades(cell):
    rows = cell["methods"]
    missing = _missing(rows, ("base", "lora"))
    if missing:
        return missing
    lora = rows["lora"]
    if lora["non_en"] is None:
        return _no_non_english(cell)
    diff = lora["non_en_vs_base_diff"]
    outcome, basis = judged(diff, rows, ("base", "lora"), above_holds=False)
    mark = dict(verdict=outcome, basis=basis, difference=diff,
                numbers=f"LoRA − base non-English {stats.fmt_pm(diff, signed=True, ci=True)}"
                        f"{_seeds_numbers('LoRA − base', diff)}{_seeds_note(rows, ('lora',))}")
    return _too_small(mark, [diff], cell["target_se"])


def findings(table, runs_dir, n_resamples=2000):
    """{model: {task: {finding: dict(verdict, numbers, ...)}}} by the rules of this module's
    docstring, from headline's table; also stored in each cell as cell["findings"]."""
    out = {}
    for model, tasks in table.items():
        for task, cell in tasks.items():
            if not cell["methods"]:
                continue
            marks = dict(prefix_over_lora=prefix_over_lora(runs_dir, cell, task, n_resamples),
                         soft_prompt_low_resource=soft_prompt_low_resource(runs_dir, cell, task, n_resamples),
                         lora_degrades=lora_degrades(cell))
            cell["findings"] = out.setdefault(model, {})[task] = marks
    return out


# --- Markdown --------------------------------------------------------------------------------------

def _mean_sd(value, sd):
    return "-" if value is None else f"{value:.1f}" + ("" if sd is None else f" (sd {sd:.1f})")


def change(row, target):
    """"-4.0 ± 3.6 [-11.0, +3.0]": the non-English change against the base model with its paired s.e.
    and interval; the s.e. in bold with a warning where it is over the target."""
    if row["non_en_vs_base"] is None:
        return ""
    cell = dict(mean=row["non_en_vs_base"], se=row["non_en_vs_base_se"], ci=row["non_en_vs_base_ci"])
    marked = f"**{cell['se']:.1f} > {target}**" if cell["se"] is not None and row["se_over_target"] else None
    return stats.fmt_pm(cell, signed=True, ci=True, se_text=marked)


def render_headline(table):
    lines = []
    for model, tasks in table.items():
        for task, cell in tasks.items():
            methods = cell["methods"]
            if not methods:
                lines += [f"### {model}, {task}", ""] + [f"- {n}" for n in cell["notes"]] + [""]
                continue
            n = sorted(set(cell["n_examples"].values()))
            level = round(100 * cell["level"])
            lines += [f"### {model}, {task} ({cell['metric']}; {len(cell['languages'])} languages, "
                      f"{'/'.join(map(str, n))} examples each; target non-English s.e. ≤ {cell['target_se']})", "",
                      report.markdown_table(
                          ["method", "seeds", "avg", "English", "non-English avg",
                           f"non-English vs base (± paired s.e.) [{level}% CI]",
                           f"over examples and seeds (± s.e.) [{level}% CI]"],
                          [[report.METHOD_NAMES.get(m, m), str(r["n_seeds"]), _mean_sd(r["avg"], r["avg_sd"]),
                            _mean_sd(r["en"], r["en_sd"]), _mean_sd(r["non_en"], r["non_en_sd"]),
                            "(reference)" if m == "base" else change(r, cell["target_se"]),
                            "" if m == "base" else "one seed" if r["n_seeds"] < 2 else
                            stats.fmt_seeds(r["non_en_vs_base_diff"] or {})]
                           for m, r in methods.items()]), ""]
            lines += [f"- {n}" for n in cell["notes"]] + ([""] if cell["notes"] else [])
            if any(r["se_over_target"] for r in methods.values()):
                lines += [f"Bold s.e.: over the target {cell['target_se']}; this evaluation is too small to "
                          f"resolve a change of that size.", ""]
    return "\n".join(lines)


def render_findings(marks):
    rows = [[FINDINGS[key], model, task, f"**{mark['verdict']}**" + (f" ({mark['basis']})" if mark.get("basis") else ""),
             mark["numbers"]]
            for key in FINDINGS for model, tasks in marks.items() for task, per_task in tasks.items()
            for mark in [per_task[key]]]
    return report.markdown_table(["paper's finding", "model", "task", "here", "numbers (difference ± s.e. [95% CI])"],
                                 rows)


HEADLINE_LEGEND = (
    "Scores are means over training seeds (`sd`: their spread across seeds; the base model has no "
    "training seed). Differences to the base model are paired over the same examples, per example "
    "the mean over seeds (report.compare): mean ± s.e. [95% paired bootstrap interval, questions "
    "resampled together across the languages that hold the same ones, a passage at a time]. Those "
    "intervals count which examples were drawn, not which seeds; the last column counts both, for a "
    "method of two or more seeds: the s.e. over examples and the seed sd/√n in quadrature, and a 95% "
    "Student t interval (Welch-Satterthwaite degrees of freedom). Per-language tables with the same "
    "statistics: `compare_<task>_<model>.md`.")
FINDINGS_RULES = (
    "Rules (replica.py's docstring): *prefix methods ahead of LoRA*: the better of prefix tuning and "
    "LLaMA-Adapter minus LoRA on the non-English average; holds if its 95% CI is above 0, does not hold "
    "if below, cannot tell if it spans 0. *Soft prompts strong on low-resource languages*: on the "
    "task's low-resource languages, soft prompt minus base (must be above 0 to hold) and soft prompt "
    "minus the better of prefix tuning and LLaMA-Adapter (must not be below 0); either below 0: does "
    "not hold. *LoRA degrading non-English*: LoRA minus base on the non-English average; holds if its "
    "CI is below 0, does not hold if above, cannot tell if it spans 0. Each CI is taken twice, over "
    "examples and over examples and training seeds, and the verdict needs both to agree; where a "
    "method compared has one seed, only the first exists. A verdict is provisional until every method "
    "compared has 3 seeds.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                        help="training seeds of each trained method (default 0 1 2); the base model runs once")
    parser.add_argument("--out", default=str(ROOT / "results" / "replica"))
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from finished runs")
    parser.add_argument("--plan", action="store_true",
                        help="only print what of the chosen work is left and its time at the rates measured so far")
    parser.add_argument("--overwrite", action="store_true",
                        help="let evaluate.py redo cached languages made with other settings (e.g. older sizes)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override a runs.yaml field in every run, e.g. eval_samples=16 (CPU-sized)")
    args = parser.parse_args(argv)
    if min(args.seeds) < 0:
        parser.error("--seeds must be non-negative")
    args.seeds = list(dict.fromkeys(args.seeds))
    overrides, values = parse_sets(args.set)
    # every entry and seed checked before any work starts
    jobs = [job for name in run_names(args.models, args.tasks, args.methods)
            for job in seed_runs(name, values, args.seeds)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if timings.get("protocol") != PROTOCOL:  # never add this protocol's times to another's
        timings = dict(protocol=PROTOCOL, **({"before": timings} if timings else {}))
    runs_dir = Path(C.get_run(run_names(MODELS, TASKS)[0], values).out_dir)
    _, plan_text = plan(jobs, runs_dir, timings)
    if args.plan:
        print(plan_text)
        return
    if not args.report_only:
        print(plan_text.rsplit("\n", 1)[-1], flush=True)
        timings["device"] = device_name()
        timings["devices"] = sorted(set(timings.get("devices", [])) | {timings["device"]})
        for key, cfg, seed_args in jobs:
            run_one(cfg, overrides + seed_args, timings, key, args.overwrite)
            C.write_json_atomic(timings_path, timings)
    seeds = sorted(set(SEEDS) | set(args.seeds))
    runs = report.Collector(runs_dir)
    tables = report.tables_for_runs(run_names(MODELS, TASKS), runs, report.load_paper())
    command = "python replica.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report.build_report(tables, runs, out / "report.md",
                        "Small-scale replica: per-language results (seed 0 of each trained method)", command)
    table, comparisons = headline(runs_dir, seeds=seeds, n_resamples=args.resamples)
    marks = findings(table, runs_dir, args.resamples)
    for (model, task), result in comparisons.items():
        report.write_compare(dict(result, command=command), out / f"compare_{task}_{model}.md")
    C.write_json_atomic(out / "headline.json", table)
    devices = ", ".join(timings.get("devices", [timings.get("device", "an unrecorded device")]))
    C.write_text_atomic(out / "headline.md", "\n".join([
        "# Small-scale replica: headline", "", f"Written by `{command}`; runs made on {devices}.", "",
        HEADLINE_LEGEND, "", render_headline(table), "## The paper's findings at this scale", "", FINDINGS_RULES, "",
        render_findings(marks) if marks else "No (model, task) has finished runs to judge yet.", ""]))
    print(f"wrote {out / 'report.md'} and {out / 'headline.md'}")


if __name__ == "__main__":
    main()
