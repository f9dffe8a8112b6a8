"""What every task shares: the Task base class, which reads, checks and samples the examples its
subclasses feed it; the hub and local-file loaders; prompt fitting and tokenisation for training
and evaluation; and matching a generated answer to an option."""
import contextlib
import hashlib
import json
import random
import unicodedata
from pathlib import Path


def sample(rows, n=None, seed=0, draw="rows"):
    """n rows drawn with random.Random(seed), kept in their original order; all rows if n is None.

    draw "groups": whole groups instead (a row's `group`: XNLI's premise, XQuAD's paragraph, Belebele's
    passage; a row without one is a group of its own; rows with none at all are refused), in an order
    shuffled by the seed, as many as fit in n rows, so the sample may hold up to a group fewer than n
    (an empty one is refused). XNLI's premises each hold one hypothesis per label: whole, they keep the
    sample's labels balanced, so a model's label bias does not move its score with the draw. The order
    depends on the group names alone, so parallel languages draw the same groups, and a larger n holds
    every row of a smaller one."""
    if draw not in ("rows", "groups"):
        raise ValueError(f"draw={draw!r} is not one of rows, groups")
    if n is None or n >= len(rows):
        return list(rows)
    if draw == "rows":
        keep = sorted(random.Random(seed).sample(range(len(rows)), n))
        return [rows[i] for i in keep]
    if not any(row.get("group") for row in rows):
        raise ValueError("draw 'groups': none of these rows has a group (MGSM's problems stand alone; XNLI's "
                         "premises are numbered from the English file); draw rows one at a time")
    members = {}
    for i, row in enumerate(rows):
        members.setdefault(str(row.get("group") or f"row-{i}"), []).append(i)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    keep, total = [], 0
    for name in order:
        if total + len(members[name]) > n:
            break
        keep += members[name]
        total += len(members[name])
    if not keep:
        raise ValueError(f"a sample of {n} rows drawn in whole groups is empty: the first group drawn ({order[0]}) "
                         f"holds {len(members[order[0]])} rows; draw more rows, or draw rows one at a time")
    return [rows[i] for i in sorted(keep)]


def _local(data_dir, relative, layout):
    path = Path(data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected layout under data_dir: {layout}")
    return path


def _read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError
                raise ValueError(f"{path} line {i} is not JSON ({e}); expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {i} is a {type(row).__name__}; expected one JSON object per line")
            rows.append(row)
    return rows


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _hub(path, config, split):
    import datasets  # slow to import; only hub runs need it
    return datasets.load_dataset(path, config, split=split).to_list()


class Task:
    """One benchmark: where its data lives, how it is prompted and how answers are scored.

    A subclass reads every row of a training source (_train_rows) or of one language's evaluation
    set (_eval_rows); train_examples and eval_examples check the request and sample from those rows,
    the same way for every task.
    """
    name = ""
    kind = "choice"              # "choice": rank choices by log-likelihood; "generate": greedy text
    languages: tuple = ()        # default evaluation languages, English first
    max_new_tokens = 0
    stop: tuple = ()
    primary_metric = "accuracy"
    train_sources: tuple = (None,)
    default_source = ""            # the name of what train_source None reads
    train_lang = "en"              # the language code every training row carries
    eval_subsets: tuple = (None,)
    eval_split = "test"            # the split eval_examples reads when given none
    eval_splits: tuple = ("test",)  # the splits it can read

    def check_language(self, lang):
        if lang not in self.languages:
            raise ValueError(f"{self.name} has no language {lang!r}; valid: {', '.join(self.languages)}")

    def _check(self, source=None, subset=None, split=None):
        if source not in self.train_sources:
            raise ValueError(f"{self.name}: unknown training source {source!r}; valid: {self.train_sources}")
        if subset not in self.eval_subsets:
            raise ValueError(f"{self.name}: unknown eval subset {subset!r}; valid: {self.eval_subsets}")
        if split is not None and split not in self.eval_splits:
            raise ValueError(f"{self.name}: unknown eval split {split!r}; valid: {self.eval_splits}")

    def check_train_source(self, data_dir=None, source=None):
        """Raise ValueError, before any long work, if `source` cannot give this task's training set."""
        self._check(source=source)

    def train_examples(self, data_dir=None, source=None, n=None, seed=0):
        """English training rows.

        Args:
            data_dir: None for the hub, else a local folder in the layout of data/__init__.py.
            source: one of train_sources (the task's _train_rows says what each reads).
            n: number of rows to sample (fixed seed, order kept); None: _train_n's default, all rows
                unless the task says otherwise.
            seed: sampling seed.
        """
        self.check_train_source(data_dir, source)
        rows = self._train_rows(data_dir, source)
        for r in rows:
            r["lang"] = self.train_lang
        return sample(rows, self._train_n(source) if n is None else n, seed)

    def eval_examples(self, lang, data_dir=None, subset=None, n=None, seed=0, split=None, draw="rows"):
        """Evaluation rows in one language.

        Args:
            lang: one of the task's languages.
            data_dir: None for the hub, else a local folder in the layout of data/__init__.py.
            subset: one of eval_subsets: None for every row, else a held-out part (the task's
                _eval_rows says which).
            n: number of rows to sample (fixed seed, order kept); None: all.
            seed: sampling seed.
            split: one of eval_splits; None: eval_split.
            draw: "rows" or "groups" (whole premises, paragraphs, passages): see sample.
        """
        self.check_language(lang)
        self._check(subset=subset, split=split)
        return sample(self._eval_rows(lang, data_dir, subset, split), n, seed, draw)

    def _train_rows(self, data_dir, source):
        raise NotImplementedError

    def _train_n(self, source):
        """How many rows train_examples samples when given no n: None, all."""
        return None

    def _eval_rows(self, lang, data_dir, subset, split):
        """Every row of `subset` in `lang`; split is None (eval_split) or one of eval_splits."""
        raise NotImplementedError

    def prompt(self, ex, style="paper"):
        raise NotImplementedError

    def target(self, ex, style="paper"):
        """Gold continuation for training: the gold choice for choice tasks."""
        return self.choices(ex, style)[ex["label"]]

    def choices(self, ex, style="paper"):
        raise NotImplementedError(f"{self.name} is a {self.kind} task")

    def scored(self, ex, style="paper"):
        """(context, options) that log-likelihood scoring compares: the prompt and its choices,
        unless a style scores more of the text (XNLI's harness style)."""
        return self.prompt(ex, style), self.choices(ex, style)

    def score(self, prediction, ex):
        raise NotImplementedError(f"{self.name} is a {self.kind} task")

    def cut_losses(self, ex, prompt, n_chars):
        """What an answer depends on that `prompt`, cut from the left, loses with its first n_chars
        characters, as counts to sum over examples; {} where the task names no such part."""
        return {}


def _check_style(style):
    if style not in ("paper", "harness"):
        raise ValueError(f"unknown prompt style {style!r}; valid: 'paper', 'harness'")


def cut_at_stop(text, stop):
    """The text before the first stop string, stripped."""
    for s in stop:
        text = text.split(s)[0]
    return text.strip()


# prompt_style harness generates greedily up to the task's stop or HARNESS_MAX_NEW_TOKENS tokens
HARNESS_MAX_NEW_TOKENS = 256  # the harness's HFLM.max_gen_toks, which its XQuAD and MGSM tasks keep


def _normal(text):
    """NFKC (full-width forms, e.g. "，", become ASCII) and casefolded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _is_punct(char):
    return char.isspace() or unicodedata.category(char)[0] in "PS"  # punctuation and symbols, any script


# scripts written without spaces between words: an option's word may run straight into the next
_UNSPACED = ("CJK ", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _option_word(option):
    """An option's first word (split on spaces), punctuation stripped: " Ja, x" -> "ja"."""
    words = _normal(option).split(maxsplit=1)
    word = words[0] if words else ""
    while word and _is_punct(word[0]):
        word = word[1:]
    while word and _is_punct(word[-1]):
        word = word[:-1]
    return word


def _answers_with(text, word):
    """Whether text (normalised, leading punctuation gone) begins with the word as a word: what follows
    is the end, a space, punctuation or a symbol, or anything where the word's script has no spaces
    ("ใช่ครับ" begins with "ใช่"; "As the" does not begin with "a")."""
    if not word or not text.startswith(word):
        return False
    if len(text) == len(word):
        return True
    return unicodedata.category(text[len(word)])[0] not in "LMN" or unicodedata.name(word[-1], "").startswith(_UNSPACED)


def match_choice(text, choices):
    """The index of the option whose first word the generated answer begins with (after NFKC, case
    and leading punctuation or spaces; in scripts without spaces, "是的，他们" and "ใช่ครับ" begin with
    "是的" and "ใช่"), the longest such word winning; None when no option matches or the longest is
    more than one option's: an unmatched answer is wrong."""
    text = _normal(text)
    while text and _is_punct(text[0]):
        text = text[1:]
    words = [_option_word(c) for c in choices]
    hits = [i for i, w in enumerate(words) if _answers_with(text, w)]
    longest = max((len(words[i]) for i in hits), default=0)
    hits = [i for i in hits if len(words[i]) == longest]
    return hits[0] if len(hits) == 1 else None


def check_languages(task, languages):
    """Raise ValueError naming every language the task cannot evaluate."""
    bad = []
    for lang in languages:
        try:
            task.check_language(lang)
        except ValueError:
            bad.append(lang)
    if bad:
        raise ValueError(f"{task.name} has no language(s) {', '.join(bad)}; valid: {', '.join(task.languages)}")


@contextlib.contextmanager
def schema_errors(task, data_dir):
    """Turn a row without an expected field into one clear error instead of a KeyError."""
    try:
        yield
    except KeyError as e:
        raise ValueError(f"{task.name} data from {data_dir or 'the hub'} has a row without the field {e}; "
                         f"rows must follow the hub schema (see the task's docstring in data/{task.name}.py)") from None


def fit_prompt(tokenizer, prompt, room=None):
    """A prompt's token ids as the model sees them (with the tokenizer's special tokens, BOS), cut
    to fit, and how much was cut.

    Args:
        room: the most tokens kept (None: all). A longer prompt loses tokens from the left, after
            BOS, so the question and the answer cue at its end stay whole. Training and evaluation
            cut the same way.

    An empty prompt is the one token lm-evaluation-harness conditions an empty context on: BOS, or
    EOS for a tokenizer without one (the first answer token needs a token to be predicted from).

    Returns:
        (ids, tokens removed, characters removed): the model no longer sees prompt[:characters].
    """
    if not prompt:
        return [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id], 0, 0
    fast = getattr(tokenizer, "is_fast", False)  # only fast tokenizers give character offsets
    encoded = tokenizer(prompt, return_offsets_mapping=True) if fast else tokenizer(prompt)
    ids = encoded["input_ids"]
    if room is None or len(ids) <= room:
        return ids, 0, 0
    bos = tokenizer.bos_token_id
    head = ids[:1] if bos is not None and ids[0] == bos and room > 1 else []
    start = len(ids) - (room - len(head))  # the first token kept after the head
    kept = head + ids[start:]
    if fast:
        chars = encoded["offset_mapping"][start][0]
    else:
        chars = max(len(prompt) - len(tokenizer.decode(ids[start:], skip_special_tokens=True)), 0)
    return kept, start - len(head), chars


def prompt_ids(tokenizer, prompt, room=None):
    """fit_prompt's ids alone."""
    return fit_prompt(tokenizer, prompt, room)[0]


def answer_ids(tokenizer, prompt, answer):
    """The answer's token ids as they stand after the prompt in the whole text, which is what the
    model reads in a document. Tokenized alone, an answer can come out otherwise: a sentencepiece
    tokenizer in legacy mode reads " A" as "▁▁" "A" where the text after "Answer:" has "▁A". When a
    token spans the prompt's end and the answer's start, there is no clean split: then the answer
    alone (the prompt's own tokens stay as the prompt has them)."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if whole[:len(head)] == head and len(whole) > len(head):
        return whole[len(head):]
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def training_features(tokenizer, prompt, target, max_length):
    """input_ids, labels and the prompt tokens cut of one training example: the loss is on the
    target and EOS only.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        prompt: the text before the answer (tokenised with special tokens, as at evaluation).
        target: the gold continuation, as its tokens stand after the prompt (answer_ids; evaluation
            scores choices the same way).
        max_length: the most tokens kept; a long prompt loses tokens from the left (after BOS)
            so that the answer stays whole.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    target_part = answer_ids(tokenizer, prompt, target) + [tokenizer.eos_token_id]
    room = max_length - len(target_part)
    if room < 1:  # the first answer token needs at least one prompt token to be predicted from
        raise ValueError(f"target of {len(target_part)} tokens (with EOS) leaves no room for the prompt "
                         f"in max_length {max_length}")
    prompt_part, n_cut, _ = fit_prompt(tokenizer, prompt, room)
    return prompt_part + target_part, [-100] * len(prompt_part) + target_part, n_cut


def file_sha256(path):
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
