"""What evaluation and training cut to fit max_length, and answers that do not depend on batching:
per-language cut records (lost XQuAD answers, MGSM exemplars), the parallel subset that fits every
language, one context per choice example, and per-prompt sampling seeds. Tiny random Llama, CPU."""
import json
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TemperatureLogitsWarper, TopPLogitsWarper

import config as C
import data
import evaluate
import train
from test_pipeline import runs_file


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


PROMPTS = ["Context: The river flows to the sea. Question: Where does the river flow? Answer:",
           "Premise: a man plays guitar. Answer:",
           "Hypothesis: a person makes music, a man plays guitar, the river flows to the sea. Answer:",
           "Question: Where?", "Context: a man. Question: Who plays guitar? Answer:",
           "Premise: the sea. Hypothesis: the river flows. Answer:", "Answer:"]


# --- item 7: one context per example, whatever its options' lengths ---------------------------

@pytest.mark.parametrize("batch_size", [1, 8])
def test_every_option_of_an_example_is_scored_after_the_same_cut_context(tiny, monkeypatch, batch_size):
    model, tokenizer = tiny
    prompt = PROMPTS[2]
    options = [" sea", " the river flows", " a person makes music and a man plays guitar"]
    sizes = [len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options]
    max_length = 20
    assert len(set(sizes)) == 3 and len(data.prompt_ids(tokenizer, prompt)) + min(sizes) > max_length  # cut
    seen = []
    forward = model.model.forward
    def spy(input_ids, attention_mask, **kw):
        seen.append([ids[:int(m.sum())].tolist() for ids, m in zip(input_ids, attention_mask)])
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kw)
    monkeypatch.setattr(model.model, "forward", spy)
    got = evaluate.choice_logprobs(model, tokenizer, [prompt], [options], batch_size=batch_size, device="cpu",
                                   max_length=max_length)[0]
    monkeypatch.undo()
    # the context is read once, cut once, leaving room for the longest option (a per-option cut gives
    # the short options more text)
    ((context,), *continuations) = seen
    assert len(context) + max(sizes) == max_length
    assert len(continuations) == 2  # the two options of more than one token; " sea" is scored from the context
    # and every option scores as one forward pass over that same context and the option
    for option, score in zip(options, got):
        ids = data.answer_ids(tokenizer, prompt, option)
        logits = model(input_ids=torch.tensor([context + ids])).logits[0, len(context) - 1:-1]
        want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).sum().item()
        assert score == pytest.approx(want, abs=1e-4), option


# --- item 6: a sample depends on the seed and the prompt, not on the batch ---------------------

def test_sampled_answers_do_not_depend_on_the_batch_size(tiny):
    model, tokenizer = tiny
    def sample(batch_size, seed, do_sample=True):
        torch.manual_seed(seed)  # as evaluate_language seeds it
        return evaluate.generate(model, tokenizer, PROMPTS, batch_size=batch_size, device="cpu", max_new_tokens=6,
                                 do_sample=do_sample, temperature=0.1, top_p=0.75)
    want = sample(1, seed=0)
    for batch_size in (2, 3, 8):
        assert sample(batch_size, seed=0) == want, batch_size
    assert sample(3, seed=1) != want  # the seed matters
    assert want != sample(3, seed=0, do_sample=False)  # and it is really sampled, not greedy


def test_answers_that_run_to_max_new_tokens_are_flagged(tiny):
    model, tokenizer = tiny
    run = lambda stop=(), limit=True: evaluate.generate(  # noqa: E731
        model, tokenizer, PROMPTS, batch_size=3, device="cpu", max_new_tokens=4, stop=stop, with_limit=limit)
    free = run()
    assert [text for text, _ in free] == run(limit=False)
    # the raw tokens, one prompt at a time: at the limit unless the answer ended (end of sequence)
    raw = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        raw.append(model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:])
    assert [at for _, at in free] == [len(r) == 4 and r[-1].item() != tokenizer.eos_token_id for r in raw]
    assert any(at for _, at in free)
    # a stop string the first answer produces at its second token ends that answer before the limit
    stop = tokenizer.decode(raw[0][1:2])
    stopped = run(stop=(stop,))
    assert stopped[0] == (tokenizer.decode(raw[0][:1], skip_special_tokens=True).split(stop)[0], False)


def test_row_sampler_draws_from_the_distribution_transformers_samples_from():
    torch.manual_seed(0)
    logits = torch.randn(1, 8) * 2
    temperature, top_p = 0.7, 0.8
    # what do_sample=True draws from: temperature, then top-p, then softmax
    want = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits)).softmax(-1)[0]
    n = 4000
    counts = Counter()
    for seed in range(n):
        sampler = evaluate._RowSampler([torch.Generator().manual_seed(seed)], temperature, top_p)
        out = sampler(None, logits.clone())
        assert (out == 0).sum() == 1 and torch.isinf(out).sum() == 7  # one token left for greedy to take
        counts[int(out.argmax())] += 1
    got = torch.tensor([counts[i] / n for i in range(8)])
    sigma = (want * (1 - want) / n).sqrt()
    print("sampled", got.tolist(), "\nwanted ", want.tolist())
    assert (got[want == 0] == 0).all()  # never outside the nucleus
    assert ((got - want).abs() <= 4 * sigma + 1e-9).all()


# --- item 4: what a cut prompt loses ----------------------------------------------------------

def test_fit_prompt_says_which_characters_were_cut(tiny):
    _, tokenizer = tiny
    prompt = PROMPTS[0]
    full = data.prompt_ids(tokenizer, prompt)
    for room in (3, 7, len(full) - 1):
        ids, n_tokens, n_chars = data.fit_prompt(tokenizer, prompt, room)
        assert ids == full[n_tokens:] and len(ids) == room
        assert tokenizer.decode(ids) == prompt[n_chars:]  # exactly the text the model still sees
    assert data.fit_prompt(tokenizer, prompt, len(full)) == (full, 0, 0)


def test_cut_losses_name_lost_answers_and_exemplars():
    xquad = data.load_task("xquad")
    ex = dict(context="Paris is big. The sea is blue.", question="Where?", answers=["Paris", "the capital"])
    prompt = xquad.prompt(ex)
    start = prompt.index("Paris")
    assert xquad.cut_losses(ex, prompt, start) == dict(answer_lost=0)  # still whole
    assert xquad.cut_losses(ex, prompt, start + 1) == dict(answer_lost=1)
    assert xquad.cut_losses(dict(ex, answers=["not in it"]), prompt, 40) == dict(answer_lost=0)  # never there

    mgsm = data.load_task("mgsm")
    shots = [dict(question="Q: one?", answer="A: 1."), dict(question="Q: two?", answer="A: 2."),
             dict(question="Q: three?", answer="A: 3.")]
    ex = dict(question="four?", lang="en", exemplars=shots)
    prompt = mgsm.prompt(ex)
    ends = [prompt.index(s["answer"]) + len(s["answer"]) + 2 for s in shots]  # each exemplar ends with "\n\n"
    assert mgsm.cut_losses(ex, prompt, 0) == dict(exemplars_lost=0, exemplars_cut=0)
    assert mgsm.cut_losses(ex, prompt, 3) == dict(exemplars_lost=0, exemplars_cut=1)
    assert mgsm.cut_losses(ex, prompt, ends[0]) == dict(exemplars_lost=1, exemplars_cut=0)
    assert mgsm.cut_losses(ex, prompt, ends[1] + 1) == dict(exemplars_lost=2, exemplars_cut=1)
    assert mgsm.cut_losses(ex, prompt, ends[2] + 1) == dict(exemplars_lost=3, exemplars_cut=0)


def xquad_cfg(tmp_path, model_dir, shared_data, **extra):
    return C.get_run("tiny", path=runs_file(tmp_path, model_dir, shared_data, **dict(
        dict(method="base", task="xquad", eval_subset="articles_32_47", eval_split=None, eval_samples=4,
             max_new_tokens=3, do_sample=False), **extra)))


def test_cut_prompts_are_counted_as_the_model_saw_them(tiny, tiny_model_dir, shared_data, tmp_path, monkeypatch):
    model, tokenizer = tiny
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, eval_fit="cut", max_length=600, eval_samples=6)
    task = data.load_task("xquad")
    seen = []
    def fake_decode(model, rows, heads, *, max_new_tokens, **kw):  # each row: the prompt ids the model reads
        seen.extend(rows)
        return [[5] * max_new_tokens for _ in rows]
    monkeypatch.setattr(evaluate, "decode_rows", fake_decode)
    result = evaluate.evaluate_language(model, tokenizer, task, cfg, "de", "cpu")
    examples = task.eval_examples("de", cfg.data_dir, subset=cfg.eval_subset, n=6, seed=cfg.seed)
    cut = result["truncation"]
    assert result["n"] == 6 and cut["length"] == 600 and cut["eval_fit"] == "cut"
    removed = []
    for ex, record in zip(examples, result["predictions"]):
        full = data.prompt_ids(tokenizer, task.prompt(ex))
        (row,) = [r for r in seen if full[len(full) - len(r):] == r]  # the tail of its prompt the model saw
        assert len(row) <= 600 - 3 and record["tokens_cut"] == len(full) - len(row)
        kept = tokenizer.decode(row)
        assert record["answer_lost"] == int(not any(a in kept for a in ex["answers"]))
        removed += [record["tokens_cut"]] if record["tokens_cut"] else []
    assert cut["n_cut"] == len(removed) > 0 and cut["max_tokens_cut"] == max(removed)
    assert cut["mean_tokens_cut"] == pytest.approx(sum(removed) / len(removed))
    assert cut["lost"] == dict(answer_lost=sum(r["answer_lost"] for r in result["predictions"]))


def test_whole_prompts_by_default_bounded_by_the_context_window(tiny, tiny_model_dir, shared_data, tmp_path):
    model, tokenizer = tiny
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, max_length=64)  # max_length bounds training only
    assert cfg.eval_fit == "whole"
    result = evaluate.evaluate_language(model, tokenizer, data.load_task("xquad"), cfg, "th", "cpu")
    cut = result["truncation"]
    assert cut["length"] == model.config.max_position_embeddings == 2048
    # the tiny tokenizer spends a token per byte or two on Thai: what passes 2048 is cut, and said so
    lengths = [len(data.prompt_ids(tokenizer, data.load_task("xquad").prompt(ex)))
               for ex in data.load_task("xquad").eval_examples("th", str(shared_data), subset="articles_32_47", n=4)]
    assert cut["n_cut"] == sum(n > 2048 - 3 for n in lengths)
    assert all(r["tokens_cut"] == max(n - (2048 - 3), 0) for r, n in zip(result["predictions"], lengths))


def test_subset_is_parallel_fits_every_language_and_ignores_the_cache(tiny_model_dir, shared_data, tmp_path, capsys):
    languages = ["en", "de", "ru"]
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, eval_fit="subset", max_length=1200,
                    eval_languages=languages)
    evaluate.run(cfg)
    out = capsys.readouterr().out
    assert "eval_fit subset:" in out and "prompts cut" not in out
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = data.load_task("xquad")
    # independently: the held-out questions whose prompt leaves 3 new tokens' room in every language
    fits = {}
    for lang in languages:
        for ex in task.eval_examples(lang, str(shared_data), subset="articles_32_47"):
            fits.setdefault(ex["id"], []).append(len(data.prompt_ids(tokenizer, task.prompt(ex))) <= 1200 - 3)
    fit_ids = {i for i, ok in fits.items() if all(ok)}
    assert 4 < len(fit_ids) < len(fits)  # a real choice at this length
    want = [ex["id"] for ex in data.sample([ex for ex in task.eval_examples("en", str(shared_data),
                                                                           subset="articles_32_47")
                                            if ex["id"] in fit_ids], 4, cfg.seed)]
    eval_dir = cfg.run_dir / "eval" / "base"
    for lang in languages:
        result = json.loads((eval_dir / f"{lang}.json").read_text())
        assert [r["id"] for r in result["predictions"]] == want, lang  # the same questions in every language
        assert result["truncation"]["n_cut"] == 0 and result["truncation"]["n_fit"] == len(fit_ids)
        assert result["fit_languages"] == languages
    # a language redone while the others are cached draws from the same subset
    (eval_dir / "ru.json").unlink()
    evaluate.run(cfg)
    assert [r["id"] for r in json.loads((eval_dir / "ru.json").read_text())["predictions"]] == want
    # the subset depends on the languages it must fit: another set of languages is another subset
    assert evaluate.changed_settings(eval_dir / "en.json", dict(C.provenance(cfg), fit_languages=["en", "de"],
                                                                adapter_sha256=None)) == \
        {"fit_languages": (languages, ["en", "de"])}


def test_subset_that_nothing_fits_is_refused(tiny_model_dir, shared_data, tmp_path):
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, eval_fit="subset", max_length=64, eval_languages=["en", "th"])
    with pytest.raises(ValueError, match="no xquad example fits max_length 64.*'whole' or 'cut'"):
        evaluate.run(cfg)


def test_cut_mode_warns_and_reports_the_cuts_next_to_the_scores(tiny_model_dir, shared_data, tmp_path, capsys):
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, eval_fit="cut", max_length=600, eval_languages=["en", "zh"])
    evaluate.run(cfg)
    out = capsys.readouterr().out
    results = json.loads((cfg.run_dir / "results.json").read_text())
    for lang in ("en", "zh"):
        cut = json.loads((cfg.run_dir / "eval" / "base" / f"{lang}.json").read_text())["truncation"]
        assert results["truncation"]["base"][lang] == cut and cut["n_cut"] > 0
        assert f"warning: base {lang}: {cut['n_cut']} of 4 prompts cut from the left to fit 600 tokens" in out
    md = (cfg.run_dir / "results.md").read_text()
    zh = results["truncation"]["base"]["zh"]
    assert "| cut / scored | en | zh |" in md and f"{zh['n_cut']}/4" in md and "eval_fit cut" in md
    # a random model's 3-token answers run to the limit: counted, warned of and shown beside the cuts
    preds = json.loads((cfg.run_dir / "eval" / "base" / "zh.json").read_text())["predictions"]
    assert zh["answers_at_limit"] == sum(p["at_limit"] for p in preds) > 0 and zh["max_new_tokens"] == 3
    assert all(p["group"].startswith("paragraph-") for p in preds)  # the passage each question shares, for stats
    assert f"warning: base zh: {zh['answers_at_limit']} of 4 answers ran to max_new_tokens 3" in out
    assert f"{zh['answers_at_limit']} at the 3-token limit" in md


def test_results_from_before_eval_fit_are_not_reused(tiny_model_dir, shared_data, tmp_path):
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, eval_languages=["en"])
    evaluate.run(cfg)
    path = cfg.run_dir / "eval" / "base" / "en.json"
    extra = dict(C.provenance(cfg), adapter_sha256=None, fit_languages=None)
    assert evaluate.changed_settings(path, extra) == {}
    old = json.loads(path.read_text())
    del old["config"]["eval_fit"]  # as written before eval_fit existed: cut, unrecorded
    path.write_text(json.dumps(old))
    assert evaluate.changed_settings(path, extra) == {"eval_fit": ("cut, unrecorded", "whole")}
    assert evaluate.changed_settings(path, dict(extra, config=dict(extra["config"], eval_fit="cut"))) == \
        {"eval_fit": ("cut, unrecorded", "cut")}



def test_training_seeds_are_scored_on_the_same_examples(tiny_model_dir, shared_data, tmp_path):
    """eval_seed, not seed, draws evaluation's examples: runs of several training seeds pair."""
    drawn = {}
    for seed, eval_seed in ((0, 0), (1, 0), (0, 1)):
        cfg = xquad_cfg(tmp_path / f"s{seed}e{eval_seed}", tiny_model_dir, shared_data, eval_languages=["en"],
                        seed=seed, eval_seed=eval_seed, eval_samples=3)
        evaluate.run(cfg)
        drawn[seed, eval_seed] = [r["id"] for r in json.loads(
            (cfg.run_dir / "eval" / "base" / "en.json").read_text())["predictions"]]
    assert drawn[0, 0] == drawn[1, 0] != drawn[0, 1]
    # a result written before eval_seed existed was drawn with the run's seed
    path = cfg.run_dir / "eval" / "base" / "en.json"
    old = json.loads(path.read_text())
    del old["config"]["eval_seed"]
    old["config"]["seed"] = 5
    path.write_text(json.dumps(old))
    extra = dict(C.provenance(cfg), adapter_sha256=None, fit_languages=None)
    assert evaluate.changed_settings(path, extra) == {"eval_seed": (5, 1)}


# --- training may cut, and says how much ------------------------------------------------------

def test_training_counts_its_cut_prompts(tiny, tiny_model_dir, shared_data, tmp_path, capsys):
    _, tokenizer = tiny
    cfg = xquad_cfg(tmp_path, tiny_model_dir, shared_data, method="prefix", train_source="xquad_en_articles_0_31",
                    train_samples=12, max_length=700)
    task = data.load_task("xquad")
    features, cut, sources = train.build_features(cfg, task, tokenizer)
    removed = []
    for ex, (ids, labels) in zip(task.train_examples(cfg.data_dir, cfg.train_source, 12, cfg.seed), features):
        assert len(ids) <= 700
        n_prompt = labels.count(-100)
        removed.append(len(data.prompt_ids(tokenizer, task.prompt(ex))) - n_prompt)
    removed = [n for n in removed if n]
    assert 0 < len(removed) < 12  # some cut, some not
    assert cut == dict(n_examples=12, n_cut=len(removed), max_tokens_cut=max(removed),
                       mean_tokens_cut=pytest.approx(sum(removed) / len(removed)))
    assert f"{len(removed)} of 12 training prompts cut from the left to fit max_length 700" in capsys.readouterr().out
