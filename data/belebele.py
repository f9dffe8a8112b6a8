"""Belebele: 4-way multiple-choice reading comprehension on FLORES passages, scored by accuracy,
and the RACE and SciQ rows it can train on, in its multiple-choice (MRC) schema."""
import random
import re
from pathlib import Path

from .base import Task, _check_style, _hub, _local, _read_jsonl

BELEBELE_LANGUAGES = ("kir_Cyrl", "rus_Cyrl", "srp_Cyrl", "mya_Mymr", "shn_Mymr", "ssw_Latn", "sun_Latn", "bam_Latn",
                      "snd_Arab", "arz_Arab", "pes_Arab", "amh_Ethi", "tir_Ethi", "kaz_Cyrl", "azj_Latn", "kan_Knda",
                      "mal_Mlym", "tam_Taml", "tso_Latn", "ory_Orya", "sin_Sinh", "slk_Latn", "eng_Latn")
_LETTERS = "ABCD"


def race_to_mrc(row, index=0):
    """A RACE row (hub ehovy/race: article, question, options, answer "A".."D") in the MRC schema."""
    return dict(passage=row["article"], question=row["question"], options=list(row["options"]),
                label=_LETTERS.index(row["answer"]), id=f"race-{index}")


def sciq_to_mrc(row, index=0):
    """A SciQ row (hub allenai/sciq) in the MRC schema; the correct answer's position is drawn from
    a generator seeded by the row index, so it is fixed but not always last."""
    options = [row["distractor1"], row["distractor2"], row["distractor3"]]
    label = random.Random(index).randrange(4)
    options.insert(label, row["correct_answer"])
    return dict(passage=row["support"], question=row["question"], options=options, label=label, id=f"sciq-{index}")


class Belebele(Task):
    """Belebele: 4-way reading comprehension on FLORES passages, 900 questions per language.

    Default languages are the paper's 23; any of Belebele's 122 `<lang>_<Script>` configs is
    accepted. Training, by source:
      None: the paper's set ("the suggested English training set", 67.5K: RACE, SciQ, MultiRC,
        MCTest, MCScript2.0, ReClor), read from a prepared local file belebele_train/train.jsonl
        with one {passage, question, options: [4 strings], label: 0-3, source (optional)} per line.
        Four of the six have no hub copy in a common schema, so it cannot be built from the hub:
        without the file this source is an error, never a smaller set in its place.
      "race_sciq": RACE (ehovy/race, all) and SciQ (allenai/sciq) only, from the hub or from local
        race/train.jsonl and sciq/train.jsonl in the hub schema: what can be assembled, not the paper's set.
      "belebele_eng_train_half": English Belebele questions of the even passages; subset "heldout"
        tests the odd ones, in any language, matched by passage link.
    Every row carries its `source`, which training counts into train_log.json.
    """
    name = "belebele"
    kind = "choice"
    languages = BELEBELE_LANGUAGES
    train_sources = (None, "race_sciq", "belebele_eng_train_half")
    default_source = "belebele_train"  # what train_source None reads, as train_log.json names it
    train_lang = "eng_Latn"
    eval_subsets = (None, "heldout")
    eval_split = "test"  # Belebele has only this split
    eval_splits = ("test",)
    _SIX_SOURCES = "belebele_train/train.jsonl with {passage, question, options: [4 strings], label: 0-3}"

    def check_train_source(self, data_dir=None, source=None):
        """Before any long work: the paper's six-source set needs its prepared local file."""
        self._check(source=source)
        if source is None and (data_dir is None or not (Path(data_dir) / "belebele_train" / "train.jsonl").is_file()):
            where = "the hub" if data_dir is None else f"{Path(data_dir) / 'belebele_train' / 'train.jsonl'} (missing)"
            raise ValueError(f"belebele: the paper's six-source training set (RACE, SciQ, MultiRC, MCTest, "
                             f"MCScript2.0, ReClor; 67.5K) cannot be read from {where}: four of its sources have "
                             f"no hub copy in a common schema. Prepare {self._SIX_SOURCES} under data_dir, or set "
                             f"train_source: race_sciq to train on RACE + SciQ only (not the paper's set)")

    def check_language(self, lang):
        if not re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", lang):
            raise ValueError(f"belebele languages are <lang>_<Script> configs such as eng_Latn, not {lang!r}")

    def _rows(self, lang, data_dir):
        if data_dir is None:
            rows = _hub("facebook/belebele", lang, "test")
        else:
            rows = _read_jsonl(_local(data_dir, f"belebele/{lang}.jsonl",
                                      "belebele/<lang>_<Script>.jsonl in the hub schema"))
        return [dict(r, passage=r["flores_passage"], options=[r[f"mc_answer{k}"] for k in range(1, 5)],
                     label=int(r["correct_answer_num"]) - 1, id=f"belebele-{i:03d}", lang=lang,
                     group=f"passage-{r['link']}")  # a passage has two questions
                for i, r in enumerate(rows)]

    def _heldout_links(self, data_dir):
        numbers = {}
        for r in self._rows("eng_Latn", data_dir):
            numbers.setdefault(r["link"], len(numbers))
        return {link for link, k in numbers.items() if k % 2 == 1}

    def _train_rows(self, data_dir, source):
        """English rows in the MRC schema {passage, question, options, label, source}, per source as
        in the class docstring; "belebele_eng_train_half" reads belebele/eng_Latn.jsonl."""
        if source == "belebele_eng_train_half":
            heldout = self._heldout_links(data_dir)
            return [dict(r, source="belebele_eng") for r in self._rows("eng_Latn", data_dir) if r["link"] not in heldout]
        if source == "race_sciq":
            if data_dir is None:
                race, sciq = _hub("ehovy/race", "all", "train"), _hub("allenai/sciq", None, "train")
            else:
                race = _read_jsonl(_local(data_dir, "race/train.jsonl", "race/train.jsonl in the hub schema "
                                          "{article, question, options, answer}"))
                sciq = _read_jsonl(_local(data_dir, "sciq/train.jsonl", "sciq/train.jsonl in the hub schema "
                                          "{support, question, correct_answer, distractor1..3}"))
            return ([dict(race_to_mrc(r, i), source="race") for i, r in enumerate(race)]
                    + [dict(sciq_to_mrc(r, i), source="sciq") for i, r in enumerate(sciq)])
        rows = _read_jsonl(_local(data_dir, "belebele_train/train.jsonl", self._SIX_SOURCES))
        for i, r in enumerate(rows):
            if len(r["options"]) != 4 or r["label"] not in range(4):
                raise ValueError(f"belebele_train/train.jsonl line {i + 1}: expected {self._SIX_SOURCES}")
            r.setdefault("id", f"mrc-{i}")
            r.setdefault("source", "belebele_train")  # the file may name each row's own source
        return rows

    def _eval_rows(self, lang, data_dir, subset, split):
        """Every question (belebele/<lang>_<Script>.jsonl locally); subset "heldout": those of the
        passages source "belebele_eng_train_half" never trains on, matched by passage link."""
        rows = self._rows(lang, data_dir)
        if subset == "heldout":
            heldout = self._heldout_links(data_dir)
            rows = [r for r in rows if r["link"] in heldout]
        return rows

    def prompt(self, ex, style="paper"):
        _check_style(style)
        options = "".join(f"\n{letter}: {option}" for letter, option in zip(_LETTERS, ex["options"]))
        if style == "harness":
            return f"P: {ex['passage']}\nQ: {ex['question'].strip()}{options}\nAnswer:"
        return f"Passage: {ex['passage']}\nQuestion: {ex['question']}{options}\nAnswer:"

    def choices(self, ex, style="paper"):
        _check_style(style)
        return [" " + letter for letter in _LETTERS]
