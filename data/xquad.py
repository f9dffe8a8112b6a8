"""XQuAD: extractive question answering in 12 languages, with the SQuAD v1.1 metrics beside it.

The 12 files hold the same 48 articles in the same order, so for small demos that never test a
trained passage in any language, articles 0-31 train (source "xquad_en_articles_0_31") and 32-47
are tested (subset "articles_32_47").

The metrics follow the official SQuAD v1.1 script exactly: lowercase, drop ASCII punctuation, drop
English articles, split on whitespace, token-bag F1 and exact match, max over the gold answers.
Chinese and Thai have no spaces, so there a whole answer is one token and F1 is close to exact
match; for zh/th/ja `score` also reports `f1_char`, the same F1 over characters (punctuation and
spaces removed), close to MLQA's "mixed" segmentation, which splits CJK text into characters.
"""
import re
import string
import unicodedata
from collections import Counter

from .base import Task, _check_style, _hub, _local, _read_json, cut_at_stop

def _squad_rows(doc):
    """Flatten SQuAD v1.1 JSON into one dict per question, with its article index."""
    rows = []
    for article, entry in enumerate(doc["data"]):
        for number, paragraph in enumerate(entry["paragraphs"]):
            for qa in paragraph["qas"]:
                rows.append(dict(id=qa["id"], title=entry.get("title", ""), context=paragraph["context"],
                                 question=qa["question"], answers=[a["text"] for a in qa["answers"]],
                                 answer_starts=[a["answer_start"] for a in qa["answers"]], article=article,
                                 group=f"paragraph-{article}.{number}"))
    return rows


def _hub_squad_rows(rows, article_sizes=None):
    """Hub SQuAD/XQuAD rows ({answers: {text, answer_start}}) in the local row format."""
    articles = [a for a, size in enumerate(article_sizes) for _ in range(size)] if article_sizes else None
    if articles is not None and len(articles) != len(rows):
        raise ValueError(f"expected {len(articles)} XQuAD rows from the hub, got {len(rows)}")
    out, number = [], -1
    for i, r in enumerate(rows):  # a paragraph: a run of rows with one context, numbered within its article
        article = articles[i] if articles else None
        if i and articles and article != articles[i - 1]:
            number = -1
        if number == -1 or r["context"] != rows[i - 1]["context"]:
            number += 1
        out.append(dict(id=r["id"], title=r.get("title", ""), context=r["context"], question=r["question"],
                        answers=list(r["answers"]["text"]), answer_starts=list(r["answers"]["answer_start"]),
                        article=article, group=f"paragraph-{article}.{number}" if articles else f"paragraph-{number}"))
    return out


# questions per article of XQuAD (the same in all 12 languages); the hub's flat rows carry no
# article index, so it is recovered from these counts
XQUAD_ARTICLE_SIZES = (74, 23, 8, 30, 18, 24, 23, 25, 25, 24, 24, 24, 23, 21, 24, 36, 35, 32, 23, 20, 23, 23, 25, 25,
                       19, 24, 25, 25, 39, 22, 21, 19, 25, 25, 25, 24, 24, 21, 21, 22, 24, 26, 23, 25, 25, 17, 16, 21)
_CHAR_F1_LANGS = ("zh", "th", "ja")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text):
    """SQuAD v1.1 normalisation: lowercase, no ASCII punctuation, no a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(pred_tokens, gold_tokens):
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _chars(text):
    text = normalize_answer(text)
    return [ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("P")]


def squad_scores(prediction, golds, lang="en"):
    """{"f1", "em"} in percent, max over golds, as the official SQuAD v1.1 script; plus
    "f1_char" (character F1) for Chinese, Thai and Japanese."""
    pred = normalize_answer(prediction)
    out = dict(f1=100.0 * max(_f1(pred.split(), normalize_answer(g).split()) for g in golds),
               em=100.0 * max(float(pred == normalize_answer(g)) for g in golds))
    if lang in _CHAR_F1_LANGS:
        out["f1_char"] = 100.0 * max(_f1(_chars(prediction), _chars(g)) for g in golds)
    return out


# lm-evaluation-harness XQuAD: "<Context>: ...\n\n<Question>: ...\n\n<Answer>:" in each language,
# answered greedily up to the end of the line, or HARNESS_MAX_NEW_TOKENS
_XQUAD_HARNESS = {
    "ar": ("سيا", "سؤال", "إجابة"), "de": ("Kontext", "Frage", "Antwort"),
    "el": ("Συμφραζόμενα", "Ερώτηση", "Απάντηση"), "en": ("Context", "Question", "Answer"),
    "es": ("Contexto", "Pregunta", "Respuesta"), "hi": ("प्रसंग", "सवाल", "उत्तर"),
    "ro": ("Context", "Întrebare", "Răspuns"), "ru": ("Контекст", "Вопрос", "Ответ"),
    "th": ("บริบท", "คำถาม", "คำตอบ"), "tr": ("Bağlam", "Soru", "Cevap"),
    "vi": ("Bối cảnh", "Câu hỏi", "Trả lời"), "zh": ("语境", "问题", "回答"),
}


class XQuAD(Task):
    """XQuAD: train on English SQuAD v1.1 (87,599 questions), answer extractively in 12 languages."""
    name = "xquad"
    kind = "generate"
    languages = ("en", "hi", "el", "vi", "ar", "de", "es", "ro", "ru", "th", "tr", "zh")
    max_new_tokens = 32
    stop = ("\n",)
    primary_metric = "f1"
    do_sample = True  # the paper samples XQuAD answers: temperature 0.1, top-p 0.75
    train_sources = (None, "squad", "xquad_en_articles_0_31")
    default_source = "squad"  # what train_source None reads, as train_log.json names it
    eval_subsets = (None, "articles_32_47")
    eval_split = "validation"  # XQuAD has only this split
    eval_splits = ("validation",)

    def _rows(self, lang, data_dir):
        if data_dir is None:
            rows = _hub_squad_rows(_hub("google/xquad", f"xquad.{lang}", "validation"), XQUAD_ARTICLE_SIZES)
        else:
            path = _local(data_dir, f"xquad/xquad.{lang}.json", "xquad/xquad.<lang>.json (SQuAD v1.1 JSON)")
            rows = _squad_rows(_read_json(path))
        for r in rows:
            r["lang"] = lang
        return rows

    def _train_rows(self, data_dir, source):
        """None or "squad": SQuAD v1.1 train (squad/train.json locally); "xquad_en_articles_0_31":
        the English XQuAD questions of articles 0-31."""
        if source == "xquad_en_articles_0_31":
            return [r for r in self._rows("en", data_dir) if r["article"] < 32]
        if data_dir is None:
            return _hub_squad_rows(_hub("rajpurkar/squad", "plain_text", "train"))
        path = _local(data_dir, "squad/train.json", "squad/train.json (SQuAD v1.1 JSON, data[].paragraphs[].qas[])")
        return _squad_rows(_read_json(path))

    def _eval_rows(self, lang, data_dir, subset, split):
        """Every question (xquad/xquad.<lang>.json locally); subset "articles_32_47": the articles
        source "xquad_en_articles_0_31" never trains on."""
        rows = self._rows(lang, data_dir)
        if subset == "articles_32_47":
            rows = [r for r in rows if r["article"] >= 32]
        return rows

    def prompt(self, ex, style="paper"):
        _check_style(style)
        if style == "harness":
            context, question, answer = _XQUAD_HARNESS[ex.get("lang", "en")]
            return f"{context}: {ex['context']}\n\n{question}: {ex['question']}\n\n{answer}:"
        return f"Context: {ex['context']}\nQuestion: {ex['question']}\nAnswer:"

    def target(self, ex, style="paper"):
        return " " + ex["answers"][0]

    def score(self, prediction, ex):
        return squad_scores(cut_at_stop(prediction, self.stop), ex["answers"], ex.get("lang", "en"))

    def cut_losses(self, ex, prompt, n_chars):
        """{"answer_lost": 1 when a gold answer is in the prompt but none is in the part kept}: an
        extractive answer can then no longer be copied."""
        answers = [a for a in ex["answers"] if a]
        lost = any(a in prompt for a in answers) and not any(a in prompt[n_chars:] for a in answers)
        return dict(answer_lost=int(lost))
