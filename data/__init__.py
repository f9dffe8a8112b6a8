"""Benchmarks, prompts, metrics and tokenisation for English-only training and zero-shot transfer.

One module per benchmark, each with its metric: xnli.py, xquad.py, belebele.py and mgsm.py, on
base.py (the Task base class, loaders, prompt fitting and tokenisation); languages.py holds the
language metadata. Everything callers use is importable from here (`data.load_task`, `data.LANGUAGES`).

Every task reads the Hugging Face hub when `data_dir` is None and a local copy otherwise. Local
copies use the layout of ../shared/data (see its README) plus, for sets not there, a documented
file in the hub's schema:

    xnli/<lang>/<split>.jsonl          {premise, hypothesis, label}       (hub facebook/xnli)
    multi_nli/train.jsonl              {premise, hypothesis, label, ...}  (hub nyu-mll/multi_nli)
    xquad/xquad.<lang>.json            SQuAD v1.1 JSON                    (hub google/xquad)
    squad/train.json                   SQuAD v1.1 JSON                    (hub rajpurkar/squad)
    belebele/<lang>_<Script>.jsonl     hub schema                         (hub facebook/belebele)
    belebele_train/train.jsonl         {passage, question, options, label, source (optional)}
    race/train.jsonl, sciq/train.jsonl hub schema                         (hub ehovy/race all, allenai/sciq)
    mgsm/mgsm_<lang>.tsv, mgsm/exemplars_train.json                       (hub juletxara/mgsm)
    gsm8k/train.jsonl                  {question, answer}                 (hub openai/gsm8k)

Held-out splits for small demos never test a trained passage in any language (XNLI: odd premises,
XQuAD: articles 32-47, Belebele: odd passages; each module says how).

The paper's prompt templates did not survive in its text, so style "paper" is our plain
"Field: value ... Answer:" template; every run in runs.yaml uses it. Style "harness" follows
EleutherAI lm-evaluation-harness.
"""
from .base import (HARNESS_MAX_NEW_TOKENS, Task, answer_ids, check_languages, cut_at_stop, file_sha256, fit_prompt,
                   match_choice, prompt_ids, sample, schema_errors, training_features)
from .belebele import BELEBELE_LANGUAGES, Belebele, race_to_mrc, sciq_to_mrc
from .languages import LANGUAGES, group_averages
from .mgsm import MGSM, MGSM_PHRASES, MGSM_SEPARATORS, extract_answer, gsm8k_target, parse_number
from .xnli import XNLI
from .xquad import XQUAD_ARTICLE_SIZES, XQuAD, normalize_answer, squad_scores
# private helpers the tests read; _hub is not here on purpose: patch it in the module that calls it
# (data.xnli._hub, ...), where a patch takes effect
from .base import _read_jsonl  # noqa: F401
from .mgsm import _shot  # noqa: F401
from .xquad import _squad_rows  # noqa: F401

TASKS = {task.name: task for task in (XNLI(), XQuAD(), Belebele(), MGSM())}


def load_task(name):
    """The task called `name` (a fresh instance, so an attribute a caller sets stays its own)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return type(TASKS[name])()
