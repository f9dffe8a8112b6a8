"""MGSM answer extraction on numbers as each language writes them, down to every gold answer."""
import re

import pytest

import data

LANGS = data.MGSM.languages
# es and ru questions leave 4-digit numbers ungrouped ("5000", but "50 000"); the others group from 1000
MIN_GROUPED = {"es": 10_000, "ru": 10_000}
# a whole number of at least 1000 in a question, plain or grouped by any separator the table knows
_WHOLE = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:[ \u00a0\u202f\u2009.,]\d{3})+|\d{4,})(?!\d|[.,]\d)")


def written(n, lang, sep=None):
    """n as lang's test questions write a whole number: grouped by its first thousands separator."""
    sep = sep or data.MGSM_SEPARATORS[lang][0][0]
    return f"{n:,}".replace(",", sep) if n >= MIN_GROUPED.get(lang, 1000) else str(n)


def forms(n, lang):
    """Every way of writing n that lang's questions use or its row of the table allows."""
    out = {written(n, lang), str(n)} | {written(n, lang, sep) for sep in data.MGSM_SEPARATORS[lang][0]}
    if lang in ("zh", "ja") and n % 10_000 == 0:
        out.add(f"{n // 10_000}万")  # ja's questions write "8万ドル"
    return sorted(out)


def golds(task, lang, shared_data):
    return [int(r["answer_number"]) for r in task.eval_examples(lang, shared_data)]


@pytest.mark.parametrize("text, lang, number", [  # the issue's own examples
    ("La réponse est 70 000.", "fr", 70000),
    ("Die Antwort lautet 70.000.", "de", 70000),
    ("La respuesta es 1.000.", "es", 1000),
    ("The answer is **7**", "en", 7),
    ("Ответ: 18", "ru", 18),
])
def test_issue_examples(text, lang, number):
    assert data.extract_answer(text, lang) == (number, number)


@pytest.mark.parametrize("text, lang, phrase, last", [
    ("The answer is: 7", "en", 7, 7),
    ("The answer is — 7", "en", 7, 7),
    ("The answer is - 7", "en", 7, 7),
    ("The answer is -7.", "en", -7, -7),                    # a minus sign, not a dash
    ("so the answer is $7 per hour.", "en", 7, 7),
    ("**The answer is 1,000 apples.**", "en", 1000, 1000),
    ("The answer is: **$18.00**.", "en", 18, 18),
    ("Ответ — 18.", "ru", 18, 18),
    ("Ответ - 18 руб.", "ru", 18, 18),
    ("Ответ: **70 000** $.", "ru", 70000, 70000),
    ("Die Antwort lautet: 5.000 €.", "de", 5000, 5000),
    ("Die Antwort ist **2,5** Stunden.", "de", 2.5, 2.5),
    ("La réponse est : 70\u202f000 €.", "fr", 70000, 70000),  # CLDR's French: narrow no-break space
    ("Ответ: 70\u00a0000.", "ru", 70000, 70000),             # CLDR's Russian: no-break space
    ("La respuesta es — 50 000 dólares.", "es", 50000, 50000),
    ("答案是：1,500。", "zh", 1500, 1500),
    ("答えは8万ドルです。", "ja", 80000, 80000),
    ("答えは5万7500円です。", "ja", 57500, 57500),
    ("答えは2万5千円です。", "ja", 25000, 25000),               # units chained, largest first
    ("答案是 5千。", "zh", 5000, 5000),
    ("答案是3百元", "zh", 300, 300),
    ("答案是1億2000万", "zh", 120000000, 120000000),
    ("答案是 1.8万。", "zh", 18000, 18000),
    ("คำตอบคือ 1,200 บาท", "th", 1200, 1200),
    ("উত্তর হল 18।", "bn", 18, 18),
    ("సమాధానం: 18.", "te", 18, 18),
    ("Jibu ni 18. Kisha 20 zaidi.", "sw", 18, 20),           # the first phrase wins over the last number
    ("9 * 2 = 18 dollars", "en", None, 18),
])
def test_answer_phrase_variants(text, lang, phrase, last):
    assert data.extract_answer(text, lang) == (phrase, last)


@pytest.mark.parametrize("text, lang, number", [
    ("1.000", "de", 1000), ("1.5", "en", 1.5), ("2,5", "de", 2.5), ("1.000,5", "de", 1000.5),
    ("1,000", "en", 1000), ("1,000.5", "en", 1000.5), ("2,125", "en", 2125), ("18.", "en", 18),
    ("70 000", "fr", 70000), ("70\u00a0000", "fr", 70000), ("70\u202f000", "ru", 70000), ("1 234 567,5", "ru", 1234567.5),
    ("1.000", "es", 1000), ("1.000.000", "de", 1000000), ("0,5", "fr", 0.5),
    # both readings possible: the language's own wins
    ("1,000", "de", 1.0), ("1,000", "fr", 1.0),
    # the language's own reading impossible: English's, where it is one
    ("1.5", "de", 1.5), ("0.30", "es", 0.3), ("18.00", "de", 18), ("1,000.5", "de", 1000.5),
    # neither: no number
    ("70 000", "en", None), ("1.2.3", "de", None), ("1,2,3", "en", None), ("$18", "en", None), ("", "en", None),
])
def test_parse_number_by_convention(text, lang, number):
    assert data.parse_number(text, lang) == number


def test_english_phrase_reads_english_first():
    # a German answer in English words likely writes English numbers; the last number is still German
    assert data.extract_answer("The answer is 1,000.", "de") == (1000, 1.0)
    assert data.extract_answer("Die Antwort lautet 1,000.", "de") == (1.0, 1.0)
    assert data.extract_answer("The answer is 1.000.", "de") == (1.0, 1000)
    assert data.extract_answer("The answer is 1.000,5.", "de") == (1000.5, 1000.5)  # English cannot read it


@pytest.mark.parametrize("text, lang, last", [
    ("Il reste 70 000 €.", "fr", 70000),         # the group stays whole (it used to read 0)
    ("En 2023, il a 500 €.", "fr", 500),         # a year is not grouped with what follows a comma
    ("En 2023 500 élèves.", "fr", 500),          # nor with a group after it: 2023 is no first group
    ("In 2023 she", "en", 2023),
    ("35-2=33", "en", 33),                       # an operator is no minus sign
    ("Baada ya miaka 10 30% ya miti", "sw", 30),  # sw never groups with spaces
    ("74 - 35 = 39", "ru", 39),
])
def test_numbers_are_not_split_or_glued(text, lang, last):
    assert data.extract_answer(text, lang)[1] == last


def test_phrase_table_matches_every_exemplar(shared_data):
    task = data.load_task("mgsm")
    for lang in LANGS:
        for shot in task.exemplars(lang, shared_data):
            phrase, _ = data.extract_answer(shot["answer"], lang)
            assert phrase is not None and phrase == int(phrase), (lang, shot["answer"][-40:])


def test_questions_write_numbers_as_the_table_says(shared_data):
    """Every number >= 1000 in a test question is written plain or as written() writes it, and
    every language groups some: the formatter behind the gold test is the data's own."""
    task = data.load_task("mgsm")
    grouped = {}
    for lang in LANGS:
        questions = [r["question"] for r in task.eval_examples(lang, shared_data)]
        tokens = [m.group() for q in questions for m in _WHOLE.finditer(q)]
        for token in tokens:
            n = int(re.sub(r"\D", "", token))
            assert token in (str(n), written(n, lang)), (lang, token)
            assert data.parse_number(token, lang) == n, (lang, token)
        grouped[lang] = sum(not t.isdigit() for t in tokens)
        if lang == "ja":
            man = [m.group() for q in questions for m in re.finditer(r"\d+万", q)]
            assert sorted(man) == ["5万", "8万"] and [data.parse_number(m, lang) for m in man] == [80000, 50000]
    assert all(grouped.values()), grouped
    assert grouped == dict(en=7, th=22, zh=31, sw=7, fr=30, bn=7, de=10, te=7, ja=16, es=8, ru=8)


def test_gold_answers_read_english_style_in_every_language(shared_data):
    task = data.load_task("mgsm")
    path = shared_data / "mgsm" / "mgsm_de.tsv"  # the same English-style column in every file
    column = [line.rsplit("\t", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert "2,125" in column
    expected = [float(a.replace(",", "")) for a in column]
    for lang in LANGS:
        assert [r["answer_number"] for r in task.eval_examples(lang, shared_data)] == expected, lang
    assert all(x == int(x) for x in expected) and sum(x >= 1000 for x in expected) == 23


def test_every_gold_answer_in_every_language(shared_data):
    """Each of the 11 x 250 gold answers, written as that language's questions write numbers, is
    read back exactly after each answer phrase of the language, and as the last number without one,
    at the end of the language's first worked exemplar (so earlier numbers are in the text)."""
    task = data.load_task("mgsm")
    failures, n_checked = [], 0
    for lang in LANGS:
        phrases = data.MGSM_PHRASES[lang][2]
        shot = task.exemplars(lang, shared_data)[0]["answer"]
        reasoning = shot[:min(shot.find(p) for p in phrases if p in shot)]  # "... 5 + 6 = 11. "
        for gold in golds(task, lang, shared_data):
            for form in forms(gold, lang):
                texts = [(f"{reasoning}{p} {form}.", (gold, gold)) for p in phrases]
                texts.append((f"{reasoning}{form}.", (None, gold)))
                for text, expected in texts:
                    n_checked += 1
                    if data.extract_answer(text, lang) != expected:
                        failures.append((lang, text[-40:], data.extract_answer(text, lang), expected))
    print(f"{n_checked} answers checked, {len(failures)} misread")
    assert not failures, failures[:10]
    assert n_checked > 2 * 2750
