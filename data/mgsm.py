"""MGSM: grade-school maths word problems in 11 languages, answered with a chain of thought and
scored by the final number, with the number reading that scoring needs beside it."""
import re
from decimal import Decimal

from .base import Task, _check_style, _hub, _local, _read_json, _read_jsonl, cut_at_stop

# The native exemplars' own labels and answer sentences, per language: (question label,
# answer label, phrases before the final number). Labels include their separator; phrases do not,
# since models vary it ("Ответ — 18" in the exemplars, "Ответ: 18", "The answer is **7**").
MGSM_PHRASES = {
    "en": ("Question: ", "Step-by-Step Answer:", ("The answer is",)),
    "th": ("โจทย์: ", "คำตอบทีละขั้นตอน:", ("คำตอบคือ",)),
    "zh": ("问题：", "逐步解答：", ("答案是",)),
    "sw": ("Swali: ", "Jibu la Hatua kwa Hatua:", ("Jibu ni",)),
    "fr": ("Question : ", "Réponse étape par étape :", ("La réponse est",)),
    "bn": ("প্রশ্ন: ", "ধাপে ধাপে উত্তর:", ("উত্তর হল",)),
    "de": ("Frage: ", "Schritt-für-Schritt-Antwort:", ("Die Antwort lautet", "Die Antwort ist")),
    "te": ("ప్రశ్న: ", "దశలవారీగా సమాధానం:", ("సమాధానం",)),
    "ja": ("問題：", "ステップごとの答え：", ("答えは",)),
    "es": ("Pregunta: ", "Respuesta paso a paso:", ("La respuesta es",)),
    "ru": ("Задача: ", "Пошаговое решение:", ("Ответ",)),
}

# How each language writes numbers: (thousands separators, decimal mark), read off its test
# questions (mgsm_<lang>.tsv): de writes "80.000" and "9,99"; es, fr and ru "80 000" and "9,99";
# the rest "80,000" and "9.99"; all also leave many ungrouped ("1800"). The files' space is a plain
# one; the no-break, narrow no-break and thin spaces are what CLDR and typesetters put there
# (U+00A0 in ru, U+202F in fr), so they count too. es also groups with "." (CLDR's Spanish; the
# file never does). zh and ja also count in 万 (10,000): ja's questions write "8万ドル"; an answer
# may chain the units, largest first: "2万5千" is 25,000, "1億2000万" 120,000,000.
_SPACES = " \u00a0\u202f\u2009"
_ENGLISH = (",", ".")
MGSM_SEPARATORS = {lang: _ENGLISH for lang in MGSM_PHRASES}
MGSM_SEPARATORS.update(de=(".", ","), es=(_SPACES + ".", ","), fr=(_SPACES, ","), ru=(_SPACES, ","))
_MAN = ("zh", "ja")
_UNITS = {"百": 100, "千": 1000, "万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}


def _number(thousands, decimal):
    """Regex for a number written one way, never a piece of a longer one ("1.5" holds no "1",
    "70 000" no "70"); a thousands group has exactly 3 digits after a first group of 1 to 3."""
    spaces = "".join(c for c in thousands if c.isspace())
    longer = r"\d|[.,]\d" + (rf"|[{spaces}]\d{{3}}(?!\d)" if spaces else "")
    return rf"(?:(?!0)\d{{1,3}}(?:[{re.escape(thousands)}]\d{{3}})+|\d+)(?:{re.escape(decimal)}\d+)?(?!{longer})"


def _reader(lang, english_first):
    """(regex, conventions): one number as lang writes it or else as English does, or the other
    way round. Each way is its own named group, n0 for the preferred, so a match says which won."""
    ways = list(dict.fromkeys([MGSM_SEPARATORS[lang], _ENGLISH][::-1 if english_first else 1]))
    alternatives = "|".join(f"(?P<n{i}>{_number(*way)})" for i, way in enumerate(ways))
    # "5万7500", "2万5千": units, each with the digits that follow it
    man = rf"(?P<man>(?:[{''.join(_UNITS)}]\d{{0,4}}(?!\d|[.,]\d))+)?" if lang in _MAN else ""
    # a minus only where it cannot be an operator or a dash: "35-2" is 35 and 2, "Ответ - 18" is 18
    return rf"(?P<sign>(?<!\w)[-−])?(?<!\d)(?<!\d[.,])(?:{alternatives}){man}", ways


_READERS = {(lang, first): _reader(lang, first) for lang in MGSM_SEPARATORS for first in (False, True)}
# between an answer phrase and its number: spaces, markdown emphasis, a colon, a dash, a currency sign
_AFTER_PHRASE = r"(?:[\s*_:：—–$€£¥₹৳฿₽]|-(?=\s))*"


def _value(match, ways):
    i = next(i for i in range(len(ways)) if match.group(f"n{i}") is not None)
    thousands, decimal = ways[i]
    digits = "".join(c for c in match.group(f"n{i}") if c not in thousands).replace(decimal, ".")
    value = float(digits)  # float reads every script's digits ("１８", "১৮")
    if match.groupdict().get("man"):  # Decimal: 0.3 * 10000 must be 3000 exactly
        total, current = Decimal(0), Decimal(str(value))
        for unit, digits in re.findall(rf"([{''.join(_UNITS)}])(\d*)", match.group("man")):
            total, current = total + current * _UNITS[unit], Decimal(int(digits or 0))
        value = float(total + current)
    return -value if match.group("sign") else value


def parse_number(text, lang="en"):
    """The one number text holds, or None, read as lang writes numbers ("70 000" in fr, "1.000"
    and "2,5" in de) or, only where that fails, as English does ("1.5" in de; "2,125", "18.")."""
    pattern, ways = _READERS[(lang if lang in MGSM_SEPARATORS else "en", False)]
    match = re.fullmatch(pattern, text.strip().rstrip(".。"))
    return _value(match, ways) if match else None


def extract_answer(text, lang="en"):
    """(number after the first answer phrase or None, last number in the text or None).

    The English phrase counts as well as lang's: models trained on English GSM8K often answer with
    it. Numbers are read as lang writes them, and as English does only where lang's way cannot
    read them; after the English phrase the other way round, since a model answering in English
    likely writes English numbers: in de "Die Antwort lautet 1,000." is 1.0, "The answer is 1,000." 1000.
    """
    lang = lang if lang in MGSM_SEPARATORS else "en"
    found = []
    for phrases, english_first in ((MGSM_PHRASES[lang][2], False), (MGSM_PHRASES["en"][2], True)):
        pattern, ways = _READERS[(lang, english_first)]
        alternatives = "|".join(map(re.escape, phrases))
        match = re.search(f"(?:{alternatives}){_AFTER_PHRASE}{pattern}", text, re.IGNORECASE)
        if match:
            found.append((match.start(), _value(match, ways)))
    pattern, ways = _READERS[(lang, False)]
    numbers = list(re.finditer(pattern, text))
    phrase = min(found, key=lambda f: f[0])[1] if found else None
    return phrase, (_value(numbers[-1], ways) if numbers else None)


def _shot(exemplar):
    """One worked exemplar as MGSM prompts hold it."""
    return f"{exemplar['question']}\n{exemplar['answer']}\n\n"


def gsm8k_target(answer):
    """GSM8K's worked answer as one line ending "The answer is N.", calculator notes removed."""
    reasoning, final = answer.split("####")
    reasoning = " ".join(line.strip() for line in re.sub(r"<<[^>]*>>", "", reasoning).splitlines() if line.strip())
    return f"{reasoning} The answer is {final.strip()}."


class MGSM(Task):
    """MGSM: train on GSM8K (7,473 problems), test 8-shot native chain of thought in 11 languages.

    Training prompts are zero-shot ("Question: ...\\nStep-by-Step Answer:" with the worked
    answer as target); evaluation prompts prepend the language's 8 native exemplars, as in the
    paper (Wei et al. 2022 style) and in lm-evaluation-harness's mgsm_native_cot, so both prompt
    styles are the same here.
    """
    name = "mgsm"
    kind = "generate"
    languages = ("en", "th", "zh", "sw", "fr", "bn", "de", "te", "ja", "es", "ru")
    max_new_tokens = 256
    stop = ("\n\n",) + tuple(sorted({q.strip() for q, _, _ in MGSM_PHRASES.values()}))
    primary_metric = "acc"
    default_source = "gsm8k"  # what train_source None reads, as train_log.json names it
    eval_split = "test"
    eval_splits = ("test",)

    def exemplars(self, lang, data_dir=None):
        """The 8 native worked exemplars of one language (hub split train)."""
        if data_dir is None:
            return _hub("juletxara/mgsm", lang, "train")
        path = _local(data_dir, "mgsm/exemplars_train.json", "mgsm/exemplars_train.json: {lang: [{question, answer}]}")
        return _read_json(path)[lang]

    def _train_rows(self, data_dir, source):
        """GSM8K train problems (hub openai/gsm8k main, or gsm8k/train.jsonl)."""
        if data_dir is None:
            raw = _hub("openai/gsm8k", "main", "train")
        else:
            raw = _read_jsonl(_local(data_dir, "gsm8k/train.jsonl", "gsm8k/train.jsonl with {question, answer}"))
        return [dict(question=r["question"], answer=r["answer"], answer_number=parse_number(r["answer"].split("####")[-1]),
                     id=f"gsm8k-{i}") for i, r in enumerate(raw)]

    def _eval_rows(self, lang, data_dir, subset, split):
        """The 250 test problems (mgsm/mgsm_<lang>.tsv and mgsm/exemplars_train.json locally), each
        carrying its language's 8 exemplars."""
        if data_dir is None:
            raw = [(r["question"], r["answer_number"]) for r in _hub("juletxara/mgsm", lang, "test")]
        else:
            path = _local(data_dir, f"mgsm/mgsm_{lang}.tsv", "mgsm/mgsm_<lang>.tsv: question<TAB>answer, no header")
            raw = [line.rsplit("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        shots = [dict(question=e["question"], answer=e["answer"]) for e in self.exemplars(lang, data_dir)]
        # the answer column is English-style in every language's file ("2,125"), so read it as English
        return [dict(question=q, answer_number=parse_number(str(a), "en"), id=f"mgsm-{i:03d}", lang=lang, exemplars=shots)
                for i, (q, a) in enumerate(raw)]

    def prompt(self, ex, style="paper"):
        _check_style(style)
        question, answer, _ = MGSM_PHRASES[ex.get("lang", "en")]
        shots = "".join(map(_shot, ex.get("exemplars", ())))
        return f"{shots}{question}{ex['question']}\n{answer}"

    def cut_losses(self, ex, prompt, n_chars):
        """{"exemplars_lost": exemplars cut away whole, "exemplars_cut": those cut in part} when the
        prompt's first n_chars characters are cut (the exemplars open the prompt)."""
        lost = cut = end = 0
        for e in ex.get("exemplars", ()):
            start, end = end, end + len(_shot(e))
            lost += end <= n_chars
            cut += start < n_chars < end
        return dict(exemplars_lost=lost, exemplars_cut=cut)

    def target(self, ex, style="paper"):
        return " " + gsm8k_target(ex["answer"])

    def score(self, prediction, ex):
        """{"acc": answer-phrase number if present else last number, "acc_answer_phrase", "acc_last_number"}."""
        phrase, last = extract_answer(cut_at_stop(prediction, self.stop), ex.get("lang", "en"))
        gold = float(ex["answer_number"])
        by_phrase, by_last = 100.0 * (phrase == gold), 100.0 * (last == gold)
        return dict(acc=by_phrase if phrase is not None else by_last, acc_answer_phrase=by_phrase, acc_last_number=by_last)
