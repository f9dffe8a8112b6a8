"""The data package on the real benchmark copies in ../shared/data and on hub-schema fixtures."""
import json
import re
from pathlib import Path

import pytest

import data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
XNLI_LANGS = ("en", "hi", "el", "vi", "sw", "bg", "th", "ar", "de", "es", "fr", "ru", "tr", "zh", "ur")
XQUAD_LANGS = ("en", "hi", "el", "vi", "ar", "de", "es", "ro", "ru", "th", "tr", "zh")


@pytest.fixture(scope="module")
def shared():
    if not SHARED.is_dir():
        pytest.skip(f"real benchmark copies not found at {SHARED} (../shared/data beside the repo)")
    return SHARED


# --- registry ---------------------------------------------------------------------------------

def test_load_task_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'xnlii'.*xnli, xquad"):
        data.load_task("xnlii")


def test_task_attributes():
    xnli, xquad = data.load_task("xnli"), data.load_task("xquad")
    assert xnli.kind == "choice" and xnli.languages == XNLI_LANGS and xnli.eval_split == "test"
    assert xquad.kind == "generate" and xquad.languages == XQUAD_LANGS
    assert xquad.max_new_tokens == 32 and xquad.stop == ("\n",) and xquad.primary_metric == "f1"
    assert set(data.TASKS) >= {"xnli", "xquad"}


def test_load_task_gives_independent_instances():
    assert data.load_task("xnli") is not data.load_task("xnli")


def test_eval_split_is_checked():
    with pytest.raises(ValueError, match="xquad: unknown eval split 'test'.*validation"):
        data.load_task("xquad").eval_examples("en", split="test")
    with pytest.raises(ValueError, match="belebele: unknown eval split 'validation'"):
        data.load_task("belebele").eval_examples("eng_Latn", split="validation")


def test_languages_metadata_covers_every_task_language():
    for task in data.TASKS.values():
        for lang in task.languages:
            meta = data.LANGUAGES[lang]
            assert set(meta) >= {"name", "script", "family", "resource"}
            assert meta["resource"] in ("high", "low")


def test_check_languages():
    data.check_languages(data.load_task("xquad"), ["en", "zh"])
    with pytest.raises(ValueError, match="xquad has no language.*sw"):
        data.check_languages(data.load_task("xquad"), ["en", "sw"])


# --- XNLI -------------------------------------------------------------------------------------

def test_xnli_validation_counts_and_parallel_premises(shared):
    task = data.load_task("xnli")
    english = task.eval_examples("en", shared, split="validation")
    assert len(english) == 2490
    assert english[0]["id"] == "xnli-validation-00000" and english[0]["label"] == 1
    # 830 premises x 3 hypotheses, in blocks of three rows
    assert len({ex["premise"] for ex in english}) == 830
    assert all(english[i]["premise"] == english[i - i % 3]["premise"] for i in range(2490))
    for lang in ("de", "zh", "ur"):
        rows = task.eval_examples(lang, shared, split="validation")
        assert len(rows) == 2490
        assert [ex["label"] for ex in rows] == [ex["label"] for ex in english]
        assert all(rows[i]["premise"] == rows[i - i % 3]["premise"] for i in range(2490))


def test_xnli_heldout_never_tests_a_trained_premise(shared):
    task = data.load_task("xnli")
    train = task.train_examples(shared, source="xnli_en_validation")
    heldout_en = task.eval_examples("en", shared, subset="heldout")
    assert len(train) == len(heldout_en) == 1245
    assert not {ex["premise"] for ex in train} & {ex["premise"] for ex in heldout_en}
    trained_ids = {ex["id"] for ex in train}
    for lang in ("hi", "sw", "zh"):
        rows = task.eval_examples(lang, shared, subset="heldout")
        assert len(rows) == 1245 and all(ex["lang"] == lang for ex in rows)
        assert [ex["id"] for ex in rows] == [ex["id"] for ex in heldout_en]
        assert not trained_ids & {ex["id"] for ex in rows}


def test_xnli_heldout_reads_validation_even_when_eval_split_is_test(shared):
    task = data.load_task("xnli")
    assert len(task.eval_examples("de", shared, subset="heldout")) == 1245


def test_xnli_local_test_split_missing_names_path_and_layout(shared):
    with pytest.raises(FileNotFoundError, match=r"xnli/en/test\.jsonl.*xnli/<lang>/<split>\.jsonl"):
        data.load_task("xnli").eval_examples("en", shared)


def test_xnli_unknown_language_and_subset(shared):
    task = data.load_task("xnli")
    with pytest.raises(ValueError, match="no language 'ro'"):
        task.eval_examples("ro", shared)
    with pytest.raises(ValueError, match="unknown eval subset"):
        task.eval_examples("en", shared, subset="articles_32_47")
    with pytest.raises(ValueError, match="unknown training source"):
        task.train_examples(shared, source="squad")


def test_xnli_sampling_is_deterministic_and_ordered(shared):
    task = data.load_task("xnli")
    a = task.eval_examples("fr", shared, n=100, seed=3, split="validation")
    b = task.eval_examples("fr", shared, n=100, seed=3, split="validation")
    c = task.eval_examples("fr", shared, n=100, seed=4, split="validation")
    assert a == b and len(a) == 100 and a != c
    ids = [ex["id"] for ex in a]
    assert ids == sorted(ids)
    # the same seed picks the same parallel rows in every language
    assert ids == [ex["id"] for ex in task.eval_examples("th", shared, n=100, seed=3, split="validation")]


def test_a_draw_of_whole_premises_keeps_each_whole_balanced_parallel_and_nested(shared):
    task = data.load_task("xnli")
    every = task.eval_examples("de", shared, subset="heldout")
    drawn = task.eval_examples("de", shared, subset="heldout", n=400, seed=0, draw="groups")
    assert len(drawn) == 399  # 133 premises of 3: whole groups up to 400 rows
    labels = {}
    for ex in drawn:
        labels.setdefault(ex["group"], []).append(ex["label"])
    assert len(labels) == 133 and all(sorted(v) == [0, 1, 2] for v in labels.values())
    assert [ex["id"] for ex in drawn] == sorted(ex["id"] for ex in drawn)  # kept in their order
    ids = [ex["id"] for ex in drawn]
    assert ids == [ex["id"] for ex in task.eval_examples("th", shared, subset="heldout", n=400, seed=0, draw="groups")]
    assert set(ids) < {ex["id"] for ex in task.eval_examples("de", shared, subset="heldout", n=700, seed=0, draw="groups")}
    assert ids != [ex["id"] for ex in task.eval_examples("de", shared, subset="heldout", n=400, seed=1, draw="groups")]
    # drawn by rows, the same 400 break premises apart and their labels drift from a third each
    by_rows = task.eval_examples("de", shared, subset="heldout", n=400, seed=0)
    assert len(by_rows) == 400 and sum(ex["label"] == 1 for ex in by_rows) != 400 / 3
    assert task.eval_examples("de", shared, subset="heldout", n=5000, draw="groups") == every
    # rows without a group are groups of one; rows with none at all, or a bad way to draw, are refused
    loose = [dict(id=i, group="pair" if i < 2 else None) for i in range(10)]
    assert len(data.sample(loose, 4, 0, "groups")) in (3, 4)
    assert {r["id"] for r in data.sample(loose, 9, 0, "groups")} >= {0, 1}  # the pair stays whole
    assert data.sample(loose, 4, 0, "groups") != data.sample(loose, 4, 1, "groups")
    with pytest.raises(ValueError, match="none of these rows has a group"):
        data.sample([dict(id=i) for i in range(10)], 4, 0, "groups")
    with pytest.raises(ValueError, match="draw='premises' is not one of rows, groups"):
        data.sample(loose, 4, 0, "premises")
    with pytest.raises(ValueError, match=r"sample of 2 rows drawn in whole groups is empty: the first group drawn "
                                         r"\(premise-\d+\) holds 3 rows"):
        data.sample(every, 2, 0, "groups")


def test_xnli_paper_prompt_choices_and_target(shared):
    task = data.load_task("xnli")
    ex = task.eval_examples("en", shared, split="validation")[0]
    assert task.prompt(ex) == (
        "Premise: And he said, Mama, I'm home.\n"
        "Hypothesis: He called his mom as soon as the school bus dropped him off.\n"
        "Does the premise entail the hypothesis? Answer with entailment, neutral or contradiction.\n"
        "Answer:")
    assert task.choices(ex) == [" entailment", " neutral", " contradiction"]
    assert task.target(ex) == " neutral"


def test_multi_nli_fixture_train_rows():
    rows = data.load_task("xnli").train_examples(FIXTURES)
    assert len(rows) == 5  # the label -1 row has no gold label and is dropped
    assert rows[0] == dict(premise="The new rights are nice enough.",
                           hypothesis="Everyone really likes the newest benefits.", label=1, id="31193n", lang="en")
    assert data.load_task("xnli").train_examples(FIXTURES, n=2, seed=0) == \
        data.load_task("xnli").train_examples(FIXTURES, n=2, seed=0)


def test_multi_nli_hub_path_samples_100k_by_default(monkeypatch):
    calls = []

    def fake_hub(path, config, split):
        calls.append((path, config, split))
        return [dict(premise=f"p{i}", hypothesis=f"h{i}", label=i % 3, pairID=f"{i}e") for i in range(100_010)]

    monkeypatch.setattr(data.xnli, "_hub", fake_hub)
    rows = data.load_task("xnli").train_examples()
    assert calls == [("nyu-mll/multi_nli", None, "train")]
    assert len(rows) == 100_000 and rows[0]["id"] == "0e"


def test_missing_local_training_file_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"multi_nli/train\.jsonl.*hub schema"):
        data.load_task("xnli").train_examples(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"squad/train\.json.*SQuAD v1\.1 JSON"):
        data.load_task("xquad").train_examples(tmp_path)


# --- XQuAD ------------------------------------------------------------------------------------

def test_xquad_counts_and_parallel_articles(shared):
    task = data.load_task("xquad")
    english = task.eval_examples("en", shared)
    assert len(english) == 1190
    sizes = [sum(ex["article"] == a for ex in english) for a in range(48)]
    assert tuple(sizes) == data.XQUAD_ARTICLE_SIZES
    for lang in XQUAD_LANGS[1:]:
        rows = task.eval_examples(lang, shared)
        assert [(ex["id"], ex["article"]) for ex in rows] == [(ex["id"], ex["article"]) for ex in english]


@pytest.mark.parametrize("task_name, languages, subset, n, passages, sizes", [
    ("xquad", XQUAD_LANGS, "articles_32_47", 364, 80, {3, 4, 5, 8}),  # paragraphs of 3-8 questions
    ("xnli", ["en", "de", "sw", "ur", "zh"], "heldout", 1245, 415, {3}),  # premises with three hypotheses
    ("belebele", ["eng_Latn", "deu_Latn"], "heldout", 453, 244, {1, 2})])  # passages with one or two questions
def test_examples_are_grouped_by_the_passage_they_share_in_every_language(shared, task_name, languages, subset, n,
                                                                            passages, sizes):
    task = data.load_task(task_name)
    split = "validation" if task_name == "xnli" else None
    groups = [{ex["id"]: ex["group"] for ex in task.eval_examples(l, shared, subset=subset, split=split)}
              for l in languages]
    assert all(g == groups[0] for g in groups) and len(groups[0]) == n  # the same passages in every language
    counts = {}
    for group in groups[0].values():
        counts[group] = counts.get(group, 0) + 1
    assert len(counts) == passages and set(counts.values()) <= sizes
    if task_name == "xquad":  # a paragraph is one context, within one article, in every language
        for lang in ("en", "th"):
            rows = task.eval_examples(lang, shared, subset=subset)
            context = {}
            for ex in rows:
                assert context.setdefault(ex["group"], ex["context"]) == ex["context"]
                assert ex["group"].startswith(f"paragraph-{ex['article']}.")
            assert len(context) == passages
        # the hub's flat rows (no paragraphs) give the same groups, from runs of one context
        rows = task.eval_examples("de", shared)
        flat = [dict(id=r["id"], context=r["context"], question=r["question"],
                     answers=dict(text=r["answers"], answer_start=r["answer_starts"])) for r in rows]
        assert [r["group"] for r in data.xquad._hub_squad_rows(flat, data.XQUAD_ARTICLE_SIZES)] == \
            [r["group"] for r in rows]


def test_xquad_held_out_articles(shared):
    task = data.load_task("xquad")
    train = task.train_examples(shared, source="xquad_en_articles_0_31")
    test = task.eval_examples("hi", shared, subset="articles_32_47")
    assert len(train) == 826 and len(test) == 364
    assert max(ex["article"] for ex in train) == 31 and min(ex["article"] for ex in test) == 32
    assert not {ex["context"] for ex in train} & {ex["context"] for ex in task.eval_examples("en", shared, subset="articles_32_47")}


def test_xquad_hub_rows_get_article_indices(shared, monkeypatch):
    doc = json.loads((shared / "xquad" / "xquad.de.json").read_text(encoding="utf-8"))
    local = data._squad_rows(doc)
    hub_rows = [dict(id=r["id"], context=r["context"], question=r["question"],
                     answers=dict(text=r["answers"], answer_start=r["answer_starts"])) for r in local]
    monkeypatch.setattr(data.xquad, "_hub", lambda path, config, split: hub_rows)
    rows = data.load_task("xquad").eval_examples("de", subset="articles_32_47")
    assert [r["id"] for r in rows] == [r["id"] for r in local if r["article"] >= 32]
    assert rows[0]["answers"] == [r for r in local if r["article"] >= 32][0]["answers"]


def test_xquad_prompt_and_target(shared):
    task = data.load_task("xquad")
    ex = task.eval_examples("en", shared)[0]
    assert ex["question"] == "How many points did the Panthers defense surrender?"
    assert task.prompt(ex) == f"Context: {ex['context']}\nQuestion: How many points did the Panthers defense surrender?\nAnswer:"
    assert ex["answers"] == ["308"] and task.target(ex) == " 308"


def test_squad_fixture_train_rows():
    rows = data.load_task("xquad").train_examples(FIXTURES)
    assert [r["id"] for r in rows] == ["sq-0001", "sq-0002", "sq-0003", "sq-0004", "sq-0005"]
    assert rows[0]["answers"] == ["the sea"] and rows[3]["article"] == 1


# --- metrics ----------------------------------------------------------------------------------

def test_normalize_answer_like_the_official_script():
    assert data.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert data.normalize_answer("an apple a day") == "apple day"
    assert data.normalize_answer("Theatre") == "theatre"  # articles only as whole words


@pytest.mark.parametrize("prediction, golds, f1, em", [
    ("the sea", ["the sea"], 100.0, 100.0),
    ("Sea.", ["the sea"], 100.0, 100.0),                     # article and punctuation removed
    ("the deep blue sea", ["the sea"], 100 * 2 * (1 / 3) * 1 / (1 / 3 + 1), 0.0),  # P 1/3, R 1
    ("Denver Broncos", ["Broncos", "the Denver Broncos"], 100.0, 100.0),  # max over golds
    ("Carolina Panthers", ["Denver Broncos"], 0.0, 0.0),
    ("a", ["the"], 0.0, 100.0),                              # both normalise to "": equal, no tokens
])
def test_squad_f1_em(prediction, golds, f1, em):
    scores = data.squad_scores(prediction, golds)
    assert scores["f1"] == pytest.approx(f1) and scores["em"] == em
    assert "f1_char" not in scores


def test_squad_chinese_is_whole_string_tokens_plus_char_f1():
    scores = data.squad_scores("黑豹队", ["卡罗来纳黑豹队"], lang="zh")
    assert scores["f1"] == 0.0 and scores["em"] == 0.0  # official: one token each, no overlap
    # characters: 3 common, P 3/3, R 3/7
    assert scores["f1_char"] == pytest.approx(100 * 2 * (3 / 7) / (1 + 3 / 7))
    assert data.squad_scores("308。", ["308"], lang="zh")["f1_char"] == 100.0


def test_score_cuts_at_stop_and_strips(shared):
    task = data.load_task("xquad")
    ex = task.eval_examples("en", shared)[0]
    assert task.score(" 308 \nQuestion: next", ex) == {"f1": 100.0, "em": 100.0}
    zh = task.eval_examples("zh", shared)[0]
    assert set(task.score("308", zh)) == {"f1", "em", "f1_char"}


# --- tokenisation -----------------------------------------------------------------------------

class CharTokenizer:
    """One id per character (ord), BOS 1 and EOS 2, like a tokenizer that adds BOS."""
    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i > 2 or not skip_special_tokens)


def test_training_features_masks_prompt():
    ids, labels, n_cut = data.training_features(CharTokenizer(), "ab:", " c", max_length=16)
    assert ids == [1, ord("a"), ord("b"), ord(":"), ord(" "), ord("c"), 2]
    assert labels == [-100] * 4 + [ord(" "), ord("c"), 2]
    assert n_cut == 0


def test_training_features_truncates_prompt_from_the_left_keeping_bos():
    ids, labels, n_cut = data.training_features(CharTokenizer(), "abcdef", "xy", max_length=6)
    assert ids == [1, ord("e"), ord("f"), ord("x"), ord("y"), 2]
    assert labels == [-100, -100, -100, ord("x"), ord("y"), 2]
    assert n_cut == 4  # "abcd"


def test_training_features_rejects_a_target_that_does_not_fit():
    with pytest.raises(ValueError, match="no room"):
        data.training_features(CharTokenizer(), "abc", "xyz", max_length=4)


def test_training_features_with_a_real_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, labels, _ = data.training_features(tok, "Question: Where does the river flow? Answer:", " the sea", 64)
    n_prompt = len(data.prompt_ids(tok, "Question: Where does the river flow? Answer:"))
    assert ids[-1] == tok.eos_token_id and labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:-1]) == " the sea"


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert data.file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- harness prompt style -----------------------------------------------------------------------

def test_xnli_harness_prompt_in_german(shared):
    task = data.load_task("xnli")
    ex = task.eval_examples("de", shared, split="validation")[0]
    assert task.prompt(ex, "harness") == ex["premise"] + ", richtig?"
    assert task.choices(ex, "harness") == [f" {w}, {ex['hypothesis']}" for w in ("Ja", "Auch", "Nein")]
    assert task.target(ex, "harness") == f" Auch, {ex['hypothesis']}"  # label 1: neutral
    # log-likelihood scoring, as the harness's xnli_de: whole sentences after an empty context
    assert task.scored(ex, "harness") == ("", [f" {ex['premise']}, richtig? {w}, {ex['hypothesis']}"
                                               for w in ("Ja", "Auch", "Nein")])
    assert task.scored(ex, "paper") == (task.prompt(ex, "paper"), task.choices(ex, "paper"))


def test_an_empty_prompt_is_the_harness_prefix_token(tiny_model_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer("")["input_ids"] == []  # this tokenizer adds no BOS of its own
    assert data.fit_prompt(tokenizer, "") == ([tokenizer.bos_token_id], 0, 0)
    tokenizer.bos_token = None  # then EOS, as lm-evaluation-harness's HFLM.prefix_token_id
    assert data.prompt_ids(tokenizer, "") == [tokenizer.eos_token_id]


def test_xquad_harness_prompt_is_localised(shared):
    task = data.load_task("xquad")
    ex = task.eval_examples("ru", shared)[0]
    assert task.prompt(ex, "harness") == f"Контекст: {ex['context']}\n\nВопрос: {ex['question']}\n\nОтвет:"


def test_unknown_prompt_style():
    with pytest.raises(ValueError, match="unknown prompt style"):
        data.load_task("xquad").prompt(dict(context="c", question="q"), "fancy")


# --- Belebele ---------------------------------------------------------------------------------

def test_belebele_counts_labels_and_parallel_rows(shared):
    task = data.load_task("belebele")
    eng, deu = task.eval_examples("eng_Latn", shared), task.eval_examples("deu_Latn", shared)
    assert len(eng) == len(deu) == 900
    assert [(r["link"], r["question_number"], r["label"]) for r in eng] == \
        [(r["link"], r["question_number"], r["label"]) for r in deu]
    assert {r["label"] for r in eng} == {0, 1, 2, 3}
    assert eng[0]["label"] == 0 and eng[0]["options"][0].startswith("For additional volume")


def test_belebele_languages_and_validation():
    task = data.load_task("belebele")
    assert len(task.languages) == 23 and task.languages[-1] == "eng_Latn"
    assert sum(data.LANGUAGES[l]["resource"] == "low" for l in task.languages) == 19
    data.check_languages(task, ["fra_Latn", "zho_Hans"])  # any Belebele config by name
    with pytest.raises(ValueError, match="<lang>_<Script>"):
        task.eval_examples("en")


def test_belebele_prompts_and_choices(shared):
    task = data.load_task("belebele")
    ex = task.eval_examples("eng_Latn", shared)[0]
    options = "".join(f"\n{l}: {ex[f'mc_answer{k}']}" for k, l in zip(range(1, 5), "ABCD"))
    assert task.prompt(ex) == f"Passage: {ex['flores_passage']}\nQuestion: {ex['question']}{options}\nAnswer:"
    assert task.prompt(ex, "harness") == f"P: {ex['flores_passage']}\nQ: {ex['question'].strip()}{options}\nAnswer:"
    assert task.choices(ex) == [" A", " B", " C", " D"] and task.target(ex) == " A"


def test_belebele_heldout_passages(shared):
    task = data.load_task("belebele")
    train = task.train_examples(shared, source="belebele_eng_train_half")
    test = task.eval_examples("deu_Latn", shared, subset="heldout")
    assert len(train) + len(test) == 900 and len(train) == 447
    assert not {r["link"] for r in train} & {r["link"] for r in test}


def test_belebele_train_fixture_and_bad_rows(tmp_path):
    rows = data.load_task("belebele").train_examples(FIXTURES)
    assert len(rows) == 3 and rows[0]["label"] == 1 and rows[0]["id"] == "mrc-0"
    task = data.load_task("belebele")
    assert task.target(rows[0]) == " B"
    (tmp_path / "belebele_train").mkdir()
    (tmp_path / "belebele_train" / "train.jsonl").write_text(
        json.dumps(dict(passage="p", question="q", options=["a", "b"], label=0)) + "\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        task.train_examples(tmp_path)


def test_belebele_hub_training_set_from_race_and_sciq(monkeypatch):
    hub = {("ehovy/race", "all"): "race_all_train.jsonl", ("allenai/sciq", None): "sciq_train.jsonl"}
    monkeypatch.setattr(data.belebele, "_hub", lambda path, config, split: data._read_jsonl(FIXTURES / "hub" / hub[path, config]))
    rows = data.load_task("belebele").train_examples(source="race_sciq")
    assert len(rows) == 4 and [r["source"] for r in rows] == ["race", "race", "sciq", "sciq"]
    race, sciq = rows[0], rows[2]
    assert race["options"][race["label"]] == "Their plans after graduating" and race["passage"].startswith("Last week")
    assert sciq["options"][sciq["label"]] == "mesophilic organisms" and len(sciq["options"]) == 4
    assert rows == data.load_task("belebele").train_examples(source="race_sciq")  # answer positions are fixed


def test_belebele_race_sciq_reads_a_local_copy_in_the_hub_schema(tmp_path):
    for name, fixture in (("race", "race_all_train.jsonl"), ("sciq", "sciq_train.jsonl")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text((FIXTURES / "hub" / fixture).read_text())
    rows = data.load_task("belebele").train_examples(tmp_path, source="race_sciq")
    assert [r["source"] for r in rows] == ["race", "race", "sciq", "sciq"]


def test_belebele_paper_set_without_its_file_is_an_error_not_a_smaller_set(tmp_path, monkeypatch):
    """The paper's six-source set cannot come from the hub: no silent RACE + SciQ in its place."""
    monkeypatch.setattr(data.belebele, "_hub", lambda *a: pytest.fail("the hub must not be read"))
    task = data.load_task("belebele")
    for data_dir in (None, tmp_path):
        with pytest.raises(ValueError, match="six-source.*train_source: race_sciq"):
            task.check_train_source(data_dir)
        with pytest.raises(ValueError, match="six-source"):
            task.train_examples(data_dir)
    assert {r["source"] for r in task.train_examples(FIXTURES)} == {"belebele_train"}


# --- MGSM -------------------------------------------------------------------------------------

def test_mgsm_counts_numbers_and_exemplars(shared):
    task = data.load_task("mgsm")
    for lang in task.languages:
        rows = task.eval_examples(lang, shared)
        assert len(rows) == 250 and len(rows[0]["exemplars"]) == 8
        question, answer, phrases = data.MGSM_PHRASES[lang]
        for shot in rows[0]["exemplars"]:  # the phrase table matches the native exemplars
            assert shot["question"].startswith(question) and shot["answer"].startswith(answer)
            assert any(p in shot["answer"] for p in phrases)
    en = task.eval_examples("en", shared)
    assert en[0]["answer_number"] == 18.0
    assert 2125.0 in {r["answer_number"] for r in en}  # "2,125" in the file


def test_mgsm_eight_shot_prompt(shared):
    task = data.load_task("mgsm")
    ex = task.eval_examples("en", shared)[0]
    prompt = task.prompt(ex)
    assert prompt.startswith("Question: Roger has 5 tennis balls.")
    assert prompt.count("Step-by-Step Answer:") == 9 and prompt.count("\n\nQuestion: ") == 8
    assert prompt.endswith("\n\nQuestion: " + ex["question"] + "\nStep-by-Step Answer:")
    assert task.prompt(ex, "harness") == prompt
    zh = task.eval_examples("zh", shared)[0]
    assert task.prompt(zh).endswith("\n\n问题：" + zh["question"] + "\n逐步解答：")


def test_gsm8k_training_rows_and_target(shared):
    task = data.load_task("mgsm")
    rows = task.train_examples(shared)
    assert len(rows) == 7473 and rows[0]["answer_number"] == 72.0
    assert task.prompt(rows[0]) == "Question: " + rows[0]["question"] + "\nStep-by-Step Answer:"
    assert task.target(rows[0]) == (" Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips "
                                    "altogether in April and May. The answer is 72.")


@pytest.mark.parametrize("prediction, lang, acc, phrase, last", [
    (" 16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.", "en", 100, 100, 100),
    (" The answer is 18. Then 20 more.", "en", 100, 100, 0),      # phrase wins over the last number
    (" She makes 9 * 2 = 18 dollars", "en", 100, 0, 100),         # no phrase: last number
    (" The answer is 18.\n\nQuestion: 99", "en", 100, 100, 100),  # cut at the stop string
    (" 9 * 2 = 18。答案是 18。", "zh", 100, 100, 100),
    (" Die Antwort lautet 18.", "de", 100, 100, 100),
    (" Ответ — 17.", "ru", 0, 0, 0),
    (" The answer is $18.00.", "en", 100, 100, 100),
])
def test_mgsm_score(prediction, lang, acc, phrase, last):
    ex = dict(answer_number=18.0, lang=lang)
    assert data.load_task("mgsm").score(prediction, ex) == dict(acc=acc, acc_answer_phrase=phrase, acc_last_number=last)


def test_mgsm_thousands_separators():
    assert data.parse_number("2,125") == 2125.0 and data.parse_number("18.") == 18.0
    assert data.load_task("mgsm").score("The answer is 2,125.", dict(answer_number=2125, lang="en"))["acc"] == 100


def test_mgsm_hub_rows(monkeypatch):
    calls = []

    def fake_hub(path, config, split):
        calls.append((path, config, split))
        if split == "train":
            return [dict(question="Question: q", answer="Step-by-Step Answer: a. The answer is 1.", answer_number=1)] * 8
        return [dict(question="How many?", answer=None, answer_number=5, equation_solution=None)]

    monkeypatch.setattr(data.mgsm, "_hub", fake_hub)
    rows = data.load_task("mgsm").eval_examples("en")
    assert sorted(calls) == [("juletxara/mgsm", "en", "test"), ("juletxara/mgsm", "en", "train")]
    assert rows[0]["answer_number"] == 5.0 and len(rows[0]["exemplars"]) == 8


# --- language metadata ------------------------------------------------------------------------

def test_group_averages():
    scores = {"kaz_Cyrl": 60.0, "kir_Cyrl": 64.0, "rus_Cyrl": 88.0, "tso_Latn": 39.0}
    assert data.group_averages(scores, "script") == {"Cyrl": pytest.approx(212 / 3), "Latn": 39.0}
    assert data.group_averages(scores, "resource") == {"low": pytest.approx(163 / 3), "high": 88.0}
    assert data.group_averages(scores, "paper_family") == {"Turkic": 62.0, "Balto-Slavic": 88.0, "Afro-Asiatic": 39.0}
    assert data.group_averages(scores, "family")["Niger-Congo"] == 39.0
    with pytest.raises(ValueError, match="xx_Latn"):
        data.group_averages({"xx_Latn": 1.0})


def test_every_language_has_a_harness_prompt():
    for lang in data.load_task("xnli").languages:
        ex = dict(premise="p", hypothesis="h", label=0, lang=lang)
        assert data.load_task("xnli").prompt(ex, "harness").startswith("p, ")
        assert len(data.load_task("xnli").choices(ex, "harness")) == 3
    for lang in data.load_task("xquad").languages:
        ex = dict(context="c", question="q", answers=["a"], lang=lang)
        assert data.load_task("xquad").prompt(ex, "harness").endswith(":")


def test_xnli_heldout_refuses_the_test_split(shared):
    with pytest.raises(ValueError, match="validation rows"):
        data.load_task("xnli").eval_examples("en", shared, subset="heldout", split="test")


def test_training_features_without_bos():
    class NoBos(CharTokenizer):
        bos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    ids, labels, _ = data.training_features(NoBos(), "abcdef", "x", max_length=4)
    assert ids == [ord("e"), ord("f"), ord("x"), 2]
    assert labels == [-100, -100, ord("x"), 2]


def test_missing_belebele_and_mgsm_files_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"belebele/fra_Latn\.jsonl.*hub schema"):
        data.load_task("belebele").eval_examples("fra_Latn", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mgsm/mgsm_en\.tsv.*question<TAB>answer"):
        data.load_task("mgsm").eval_examples("en", tmp_path)
    with pytest.raises(ValueError, match=r"belebele_train/train\.jsonl \(missing\)"):
        data.load_task("belebele").train_examples(tmp_path)


# --- choice tasks scored by generation --------------------------------------------------------

def test_match_choice_first_word_case_and_punctuation():
    nli = [" entailment", " neutral", " contradiction"]
    assert data.match_choice(" Neutral.", nli) == 1
    assert data.match_choice("contradiction, because", nli) == 2
    assert data.match_choice("entails", nli) is None  # a different word is not an option
    assert data.match_choice("", nli) is None
    letters = [" A", " B", " C", " D"]
    assert data.match_choice(" C: the lake", letters) == 2
    assert data.match_choice("As the passage says", letters) is None  # "As" is not "A"
    harness = [" Ja, x", " Auch, x", " Nein, x"]
    assert data.match_choice(" nein, das", harness) == 2
    assert data.match_choice("yes", [" yes", " Yes!"]) is None  # ambiguous options: no answer
    assert data.match_choice("Neutralität", nli) is None and data.match_choice("neutral2", nli) is None
    assert data.match_choice("ｅｎｔａｉｌｍｅｎｔ，因为前提", nli) == 0  # full-width forms, no space after the word


@pytest.mark.parametrize("lang, answer, want", [
    ("zh", "是的，他们", 0), ("zh", "不是的。", 2), ("zh", "是", None),  # no spaces; "是" is no option's word
    ("th", "ใช่ครับ", 0), ("th", "ไม่ใช่", 2), ("ar", "نعم، الرجل", 0), ("ur", "نہیں، وہ", 2),
    ("ur", "جی ہاں", 0), ("hi", "हाँ। वह", 0), ("el", "Ναί· ο", 0), ("el", "ΝΑΊ", 0), ("de", "„Nein“", 2),
    ("es", "Asi que, x", 1), ("en", "Yesterday", None)])
def test_match_choice_reads_every_script_of_the_harness_options(lang, answer, want):
    ex = dict(lang=lang, hypothesis="x", premise="y", label=0)
    assert data.match_choice(answer, data.load_task("xnli").choices(ex, "harness")) == want


def test_generate_scoring_matches_options_and_counts_accuracy(shared, monkeypatch, tiny_model_dir):
    """evaluate_language with choice_scoring=generate: the prediction is the option the generated
    text names, and accuracy counts exactly the examples whose named option is the label."""
    import config as C
    import evaluate

    task = data.load_task("belebele")
    examples = task.eval_examples("eng_Latn", shared, n=12, seed=0)
    # the fake model answers right on even examples, names a wrong letter on every third odd one,
    # and otherwise says nothing usable
    answers = [(" " + "ABCD"[ex["label"]] + ": yes" if i % 2 == 0 else
                " " + "ABCD"[(ex["label"] + 1) % 4] if i % 3 == 0 else " I think so") for i, ex in enumerate(examples)]
    by_prompt = {task.prompt(ex): a for ex, a in zip(examples, answers)}
    monkeypatch.setattr(evaluate, "generate", lambda model, tok, prompts, *a, **k: [by_prompt[p] for p in prompts])
    from transformers import AutoTokenizer
    cfg = C.RunConfig(name="t", model="none", method="base", task="belebele", data_dir=str(shared), eval_samples=12,
                      choice_scoring="generate", eval_fit="cut")  # "cut": max_length, not the (absent) model's context
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # counts the prompts' tokens
    result = evaluate.evaluate_language(None, tokenizer, task, cfg, "eng_Latn", "cpu")
    preds = [r["prediction"] for r in result["predictions"]]
    expected = [ex["label"] if i % 2 == 0 else (ex["label"] + 1) % 4 if i % 3 == 0 else None
                for i, ex in enumerate(examples)]
    assert preds == expected
    assert result["metrics"]["accuracy"] == pytest.approx(100.0 * 6 / 12)
    assert [r["text"] for r in result["predictions"]] == answers


class DummyPrefixTokenizer:
    """Like a legacy sentencepiece tokenizer: every text gets a leading "▁", so " A" alone is "▁" "▁A"
    while after "Answer:" the text holds one token "▁A"."""
    eos_token_id, bos_token_id = 0, None

    def __call__(self, text, add_special_tokens=True):
        pieces = re.findall(r"▁?[^▁]+|▁", "▁" + text.replace(" ", "▁"))
        return {"input_ids": [sum(map(ord, p)) for p in pieces]}


def test_answers_are_scored_and_trained_as_the_tokens_in_context():
    tok = DummyPrefixTokenizer()
    whole = tok("Answer: A")["input_ids"]
    assert tok(" A", add_special_tokens=False)["input_ids"] != whole[1:]  # alone, the answer is other tokens
    assert data.answer_ids(tok, "Answer:", " A") == whole[1:]
    ids, labels, _ = data.training_features(tok, "Answer:", " A", max_length=16)
    assert ids == whole + [0] and labels == [-100] + whole[1:] + [0]
