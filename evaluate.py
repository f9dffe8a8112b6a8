"""Score a run in every language of its benchmark, next to the untrained base model.

    python evaluate.py --run demo
    python evaluate.py --run prefix_xnli_llama8b --eval_languages en,de --eval_samples 200
    torchrun --nproc_per_node 8 evaluate.py -- --run NAME      # the batches dealt out to 8 GPUs
    python evaluate.py --run NAME --harness xcopa,xstorycloze  # lm-evaluation-harness tasks (harness.py)

Choice tasks (XNLI, Belebele) compare the log-likelihood of each option after the prompt;
generation tasks (XQuAD, MGSM) generate with a KV cache, batched with left padding (questions on one
passage together, the passage read once per batch: generate), and score the text. Each language's result (metrics and every prediction) is written atomically to
out_dir/<run>/eval/<row>/<lang>.json as soon as it is done, so an interrupted evaluation resumes at
the first unfinished language. The table is written as results.json, results.csv and results.md.

Under torchrun every rank holds the whole model (`parallel` applies to training only) and computes
its share of the batches a single process would form, each exactly as that process computes it;
the results are gathered, and rank 0 writes the same files a single process writes.
"""
import argparse
import collections
import copy
import csv
import hashlib
import inspect
import io
import json
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm
from transformers import (DynamicCache, LogitsProcessor, TemperatureLogitsWarper,
                          TopPLogitsWarper)

import adapters
import config as C
import data
import models
import runlock
import share
import stats
from distributed import init_distributed, is_rank0, map_batches, script_args
from train import Curves, pad_batch


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompts, choices, *, batch_size, device, max_length=None):
    """Sum of log-probabilities of each choice's tokens after its prompt: list of lists. A prompt
    is cut from the left once, to fit max_length with the example's longest choice, so every choice
    of an example is scored after the same text (score_choices reads the prompt once for them all)."""
    encoded = [[data.answer_ids(tokenizer, p, c) for c in cs] for p, cs in zip(prompts, choices)]
    contexts = [data.prompt_ids(tokenizer, p, max_length and max(max_length - max(map(len, cs), default=0), 1))
                for p, cs in zip(prompts, encoded)]
    return score_choices(model, contexts, encoded, tokenizer.pad_token_id, batch_size=batch_size, device=device)


def cache_keyword(model):
    """The KV cache's keyword argument: `cache` from transformers 5.24 on, `past_key_values` before
    (gone in 5.40); read from the class, so a wrapped or patched forward does not hide it."""
    return "cache" if "cache" in inspect.signature(type(model.model).forward).parameters else "past_key_values"


def score_choices(model, contexts, choices, pad_id, *, batch_size, device):
    """Sum of log-probabilities of each choice's token ids after its context's ids: list of lists.

    Each context is read once (batched longest first, left-padded) into a KV cache. Its last position
    scores every choice's first token; a choice of more tokens then reads its other tokens after a
    copy of that cache, one choice index of every example in the batch at a time (at most a batch of
    rows per forward, as the context's). The same arithmetic as one forward pass per choice over
    context + choice (tests/test_gemma.py compares the two for every method and both attention
    backends), for about 1/C of the work with C choices: XNLI's labels are 2, 1 and 1 tokens in
    Gemma 3's and SmolLM2's tokenizers, which took three passes. An empty choice scores 0. Every
    scored position goes through the LM head in one call per batch (token_logprobs).

    Contexts are read whole: reading the prefix that contexts share once (XNLI's premise, Belebele's
    passage; 25-38% of their tokens) gave the same scores at 0.93-1.10x the time on a 2-core CPU
    (commit 3efbc84, benchmarks/RESULTS.md), so it stays in generation only."""

    keyword = cache_keyword(model)

    def score(batch):
        ids, mask = pad_batch([contexts[i] for i in batch], pad_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        more = max((len(c) for i in batch for c in choices[i]), default=0) > 1
        context_cache = DynamicCache(config=model.config) if more else None
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                          use_cache=more, **({keyword: context_cache} if more else {}))
        states = [out.last_hidden_state[:, -1]]  # what goes through the LM head, once, at the end
        wants = [(row, j, row, c[0]) for row, i in enumerate(batch) for j, c in enumerate(choices[i]) if c]
        for j in range(max(len(choices[i]) for i in batch) if more else 0):
            rows = [row for row, i in enumerate(batch) if j < len(choices[i]) and len(choices[i][j]) > 1]
            if not rows:
                continue
            cache = copy.deepcopy(context_cache)  # the context's alone for every choice index
            cache.batch_select_indices(torch.tensor(rows, device=device))
            tails = [choices[batch[row]][j] for row in rows]
            feed, feed_mask = pad_batch([c[:-1] for c in tails], pad_id)  # right-padded: each ends where it ends
            feed, feed_mask = feed.to(device), feed_mask.to(device)
            start = mask[rows].sum(-1, keepdim=True)  # each row's next position after its real context
            hidden = model.model(input_ids=feed, attention_mask=torch.cat([mask[rows], feed_mask], -1),
                                 position_ids=start + torch.arange(feed.shape[1], device=device), use_cache=True,
                                 **{keyword: cache}).last_hidden_state
            at = sum(map(len, states))
            for k, (row, c) in enumerate(zip(rows, tails)):  # only the choice's positions go through the LM head
                states.append(hidden[k, :len(c) - 1])
                wants += [(row, j, at + t, token) for t, token in enumerate(c[1:])]
                at += len(c) - 1
        scores = [[0.0] * len(choices[i]) for i in batch]
        picked = token_logprobs(model, torch.cat(states), [w[2] for w in wants], [w[3] for w in wants])
        for (row, j, _, _), logprob in zip(wants, picked):
            scores[row][j] += logprob
        return scores

    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    return map_batches(score, order, batch_size)


def token_logprobs(model, states, at, tokens, chunk=64):
    """log p(tokens[n] | states[at[n]]) through the LM head, as floats: each state's logits are made once
    (float32, the final logit softcap where the config has one), for chunk states at a time. One call
    for a batch's every choice token: the head's weights (Gemma 3's 262K x 640, 671 MB in fp32) are
    read once per chunk, not once per row, as were 40% of XNLI's scoring time on Gemma 3."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(config, "final_logit_softcapping", None)
    at, tokens = torch.tensor(at, dtype=torch.long), torch.tensor(tokens, dtype=torch.long)
    out = torch.empty(len(at), dtype=torch.float64)
    for lo in range(0, states.shape[0], chunk):
        logits = model.lm_head(states[lo:lo + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        norm = torch.logsumexp(logits, -1)
        here = ((at >= lo) & (at < lo + chunk)).nonzero()[:, 0]
        rows = at[here].to(logits.device) - lo
        out[here] = (logits[rows, tokens[here].to(logits.device)] - norm[rows]).double().cpu()
    return out.tolist()


class _RowSampler(LogitsProcessor):
    """Samples each row's next token with the row's own generator and masks every other token, so
    generate() run greedily takes it. Temperature, top-p and torch.multinomial are applied as
    do_sample=True applies them (transformers' own warpers, in its order, after the model's other
    processors): the same distribution, but a row's draws depend on its generator alone, not on the
    rows batched with it (transformers' sampler draws the whole batch from the global RNG)."""

    def __init__(self, generators, temperature, top_p):
        self.generators = generators
        self.warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
                       ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = scores.softmax(-1)
        picks = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        return torch.full_like(scores, -float("inf")).scatter_(1, picks, 0.0)


def _prompt_seed(prompt):
    """A number fixed by the prompt's text (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:6], "big")


def _eos_ids(model):
    """The token ids that end generation in the model's generation config (one or a list)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _common_length(a, b):
    """How many leading token ids two lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefixes(encoded, min_fraction=0.5):
    """Prompts (token id lists) that begin alike, e.g. XQuAD's questions on one passage: per prompt its
    group and how many leading tokens the group shares, read once for the group by generate().

    Sorted by their ids, prompts fall into runs whose common prefix is at least min_fraction of each
    member's tokens (XQuAD's passage is 70% of a prompt; an instruction shared by every prompt of a
    task, a small part of each, makes no group, and a run stops where a row would shrink its common
    prefix below that). A run's shared prefix stops one token short of its shortest member, so every
    row reads at least its last token itself, whose logits start the answer. A prompt in no run is a
    group of its own, sharing 0. Returns (groups, shared), lists of ints."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    groups, shared = [0] * len(encoded), [0] * len(encoded)
    runs, run, common = [], [], 0
    for i in order:
        if run:
            joint = min(common, _common_length(encoded[run[-1]], encoded[i]))
            if joint >= min_fraction * max(len(encoded[j]) for j in run + [i]):
                run, common = run + [i], joint
                continue
            runs.append((run, common))
        run, common = [i], len(encoded[i])
    if run:
        runs.append((run, common))
    for g, (members, common) in enumerate(runs):
        for i in members:
            groups[i] = g
            shared[i] = min(common, min(len(encoded[j]) for j in members) - 1) if len(members) > 1 else 0
    return groups, shared


def group_order(encoded, groups):
    """The order to batch prompts in: a group at a time (its prompts together), the groups longest first
    by token count, as every prompt was before groups (a batch is padded to its longest prompt)."""
    longest = {}
    for i, g in enumerate(groups):
        longest[g] = max(longest.get(g, 0), len(encoded[i]))
    return sorted(range(len(encoded)), key=lambda i: (-longest[groups[i]], groups[i], -len(encoded[i])))


def own_heads(rows, heads):
    """heads as read_prefixes reads them: where any row of a batch shares a prefix, a row that shares none
    reads all but its last token as a prefix of its own (every row then reads a tail of at least one)."""
    return [h or len(row) - 1 for h, row in zip(heads, rows)] if any(heads) else list(heads)


def fit_heads(model, rows, heads):
    """heads (shared_prefixes' counts for a batch's rows) as the batch can read them (read_prefixes): 0
    for a row whose prefix no other row of the batch shares (a group split between batches), all 0
    (every row read whole) where a row has one token (no prefix of its own to read) or where, under a
    sliding window, the prefixes and tails would not fit it (_window; a soft prompt's columns count)."""
    count = collections.Counter(tuple(row[:h]) for h, row in zip(heads, rows) if h)
    heads = [h if h and count[tuple(row[:h])] > 1 else 0 for h, row in zip(heads, rows)]
    if not any(heads) or min(map(len, rows)) < 2:
        return [0] * len(rows)
    window = _window(model)
    if window:
        soft = getattr(getattr(model.model, "soft_prompt", None), "prompt", None)
        own = own_heads(rows, heads)
        columns = max(own) + max(len(r) - h for r, h in zip(rows, own)) + (0 if soft is None else soft.shape[0])
        if columns >= window:
            return [0] * len(rows)
    return list(heads)


def _reads_holes(model):
    """Whether every attention layer applies a 2D mask with holes exactly: the fused kernel
    (attn_backend 'triton') represents left padding only, so rows sharing a prefix read it whole."""
    return not any(getattr(m, "xprefix_backend", None) == "triton" for m in model.modules())


def _window(model):
    """The sliding window of a model with sliding-window layers (Gemma 3's local layers), else None.
    transformers windows cache columns, not positions: a hole inside a row's window would hide real
    keys, and a sliding layer's cache keeps only the window's last columns, so a batch shares
    prefixes only where its prefixes and tails fit the window (decode_rows closes the holes after)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    sliding = any("sliding" in str(t) for t in getattr(config, "layer_types", None) or ()) or \
        getattr(config, "use_sliding_window", window is not None)
    return window if window and sliding else None


def _close_holes(model, cache, mask):
    """Moves each row's masked columns (padding, holes) to its left in the KV cache and the mask, the
    others kept in order: the layout of a left-padded batch, so decoding goes on as it does there (a
    window over cache columns then covers the real tokens it covers without holes). Every cache layer
    must hold every column (decode_rows shares prefixes only within a sliding window). Returns the
    mask so moved. A soft prompt's columns, in the cache and not in the mask, stay before the row's
    first token, where its hook inserts them."""
    soft = getattr(model.model, "soft_prompt", None)
    wide = mask
    if soft is not None:
        _, in_prompt, source = soft._layout(mask, mask.shape[0], mask.shape[1], mask.device)
        wide = soft._widen_mask(mask, in_prompt, source)
    order = torch.sort(wide, dim=-1, stable=True).indices  # (B, columns): masked first, each kind in order
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        if layer.keys.shape[2] != order.shape[1]:
            raise RuntimeError(f"a cache layer holds {layer.keys.shape[2]} of {order.shape[1]} columns: "
                               f"prefixes were shared past a sliding window")
        picks = order[:, None, :, None].expand_as(layer.keys)
        layer.keys, layer.values = layer.keys.gather(2, picks), layer.values.gather(2, picks)
    return mask.gather(1, torch.sort(mask, dim=-1, stable=True).indices)


def read_prefixes(model, rows, heads, *, pad_id, device, cache, keyword):
    """Reads the prefixes rows share into cache; returns (ids, mask, positions) of what each row reads
    next, for the caller's forward pass over the same cache.

    heads[r] > 0: row r's first heads[r] tokens are a prefix other rows of the batch share; each
    distinct prefix is read once (left-padded, one row each), its cache copied to the rows that begin
    with it, and each row then reads its own tail (ids: left-padded after the prefix, a hole, masked,
    where tails differ in length; positions count real tokens only; own_heads: a row sharing none reads
    all but its last token as its own prefix). All heads 0: ids are the rows whole, left-padded, and
    nothing is read. After the tails are read, _close_holes makes the cache an ordinary left-padded
    batch's. The same arithmetic as reading every row whole (tests/test_generate.py)."""
    heads = own_heads(rows, heads)
    if any(heads):
        prefixes = list(dict.fromkeys(tuple(row[:h]) for h, row in zip(heads, rows)))
        index = {p: k for k, p in enumerate(prefixes)}
        head_ids, head_mask = pad_batch([list(p) for p in prefixes], pad_id, left=True)
        head_ids, head_mask = head_ids.to(device), head_mask.to(device)
        model.model(input_ids=head_ids, attention_mask=head_mask, position_ids=(head_mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, **{keyword: cache})
        picks = torch.tensor([index[tuple(row[:h])] for h, row in zip(heads, rows)], device=device)
        cache.batch_select_indices(picks)
        head_mask = head_mask[picks]
    else:
        head_mask = torch.zeros(len(rows), 0, dtype=torch.long, device=device)
    ids, tail_mask = pad_batch([row[h:] for h, row in zip(heads, rows)], pad_id, left=True)
    mask = torch.cat([head_mask, tail_mask.to(device)], -1)
    return ids.to(device), mask, (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]


def decode_rows(model, rows, heads, *, pad_id, device, max_new_tokens, stop_at, pick):
    """New token ids after each row of prompt ids, decoded in one batch with a KV cache.

    heads: per row how many leading tokens it shares with other rows of the batch, read once
    (read_prefixes; 0 for none); the holes are closed after the prompts are read.
    stop_at(row, tokens) -> whether the row's answer is over after `tokens`; pick(logits, rows) -> the
    next token of each of the given rows (logits float32, (len(rows), V)). A row leaves the batch when
    it stops, so the rows still decoding cost each step what they alone cost."""
    keyword = cache_keyword(model)
    cache = DynamicCache(config=model.config)
    ids, mask, positions = read_prefixes(model, rows, heads, pad_id=pad_id, device=device, cache=cache, keyword=keyword)
    alive = list(range(len(rows)))
    new = [[] for _ in rows]
    for step in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{keyword: cache}).logits[:, -1].float()
        if step == 0 and any(heads):  # decode on as a left-padded batch, holes closed
            mask = _close_holes(model, cache, mask)
        tokens = pick(logits, alive).tolist()
        for r, t in zip(alive, tokens):
            new[r].append(t)
        going = [k for k, r in enumerate(alive) if not stop_at(r, new[r])]
        if not going:
            break
        if len(going) < len(alive):
            cache.batch_select_indices(torch.tensor(going, device=device))
            mask, positions = mask[going], positions[going]
            alive = [alive[k] for k in going]
        ids = torch.tensor([[new[r][-1]] for r in alive], device=device)
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], -1)
        positions = positions[:, -1:] + 1
    return new


@torch.no_grad()
def generate(model, tokenizer, prompts, *, batch_size, device, max_new_tokens, stop=(), do_sample=False,
             temperature=1.0, top_p=1.0, max_length=None, with_limit=False, share=True):
    """Batched generation with left padding and a KV cache; returns the new text per prompt, cut
    before the first of the `stop` strings (`with_limit`: (text, whether the answer ran to
    max_new_tokens without a stop string or end of sequence, so may be cut short) per prompt).
    Prompts are cut from the left so prompt and answer fit max_length, as training cuts them.

    Prompts that begin alike (shared_prefixes: XQuAD's questions on one passage) are batched together
    and their common prefix read once per batch (`share`, decode_rows), unless an attention layer
    cannot apply the masks that takes (attn_backend 'triton': every prompt is then read whole) or a
    batch would outgrow a sliding window. Greedy decoding takes each row's most likely token, as
    transformers' generate() does (tests/test_generate.py compares the two). Sampling draws each
    prompt's tokens from a generator of its own, seeded by one number drawn from the caller's RNG and
    the prompt's text, so a prompt samples the same in any batch (any eval_batch_size, after halving
    on out-of-memory, on any rank)."""
    room = max_length and max(max_length - max_new_tokens, 1)
    base_seed = torch.randint(2**40, ()).item() if do_sample else None
    encoded = [data.prompt_ids(tokenizer, p, room) for p in prompts]
    groups, shared = shared_prefixes(encoded) if share and _reads_holes(model) else \
        (list(range(len(prompts))), [0] * len(prompts))
    eos = set(_eos_ids(model))  # what ends a row, as in transformers' generate()
    ended = {tokenizer.eos_token_id, tokenizer.pad_token_id} | eos

    def continue_batch(batch):
        rows = [encoded[i] for i in batch]
        heads = fit_heads(model, rows, [shared[i] for i in batch])
        texts = [""] * len(batch)

        def stop_at(row, tokens):
            texts[row] = tokenizer.decode(tokens, skip_special_tokens=True)
            return tokens[-1] in eos or any(s in texts[row] for s in stop)

        if do_sample:  # each row draws with its own generator (_RowSampler), then greedy over the draw
            generators = [torch.Generator(device).manual_seed(base_seed + _prompt_seed(prompts[i])) for i in batch]
            def pick(logits, alive):
                return _RowSampler([generators[r] for r in alive], temperature, top_p)(None, logits).argmax(-1)
        else:
            def pick(logits, alive):
                return logits.argmax(-1)
        new = decode_rows(model, rows, heads, pad_id=tokenizer.pad_token_id, device=device,
                          max_new_tokens=max_new_tokens, stop_at=stop_at, pick=pick)
        out = []
        for tokens, text in zip(new, texts):
            at_limit = len(tokens) == max_new_tokens and tokens[-1] not in ended and not any(s in text for s in stop)
            for s in stop:  # generation stops after a stop string; the answer is what came before
                text = text.split(s)[0]
            out.append((text, at_limit) if with_limit else text)
        return out

    # by token count (sorting by characters padded the demo's prefill 30% above its real tokens, by tokens 24%)
    return map_batches(continue_batch, group_order(encoded, groups), batch_size)


def eval_length(cfg, model):
    """The most tokens, prompt and answer, an evaluation prompt may take: max_length under eval_fit
    "cut" and "subset"; under "whole" the model's context window (None where its config has none)."""
    if cfg.eval_fit != "whole":
        return cfg.max_length
    return getattr(model.config, "max_position_embeddings", None)


def generation_settings(task, cfg):
    """(max new tokens, sample?): the run's, else the task's. Under prompt_style harness a generation
    task takes the harness's own: greedy, up to 256 new tokens (HFLM's max_gen_toks, which the
    harness's XQuAD and MGSM task files keep), so XQuAD answers are the harness's answers."""
    if task.kind == "choice":  # choice_scoring generate: only the answer's first word is read
        return cfg.max_new_tokens or 8, False
    harness = cfg.prompt_style == "harness"
    max_new_tokens = cfg.max_new_tokens or (data.HARNESS_MAX_NEW_TOKENS if harness else task.max_new_tokens)
    do_sample = cfg.do_sample if cfg.do_sample is not None else (not harness and getattr(task, "do_sample", False))
    return max_new_tokens, do_sample


def scored_texts(task, cfg, examples):
    """(context, options or None) per example, as evaluation feeds them: log-likelihood choice
    scoring compares task.scored's options after its context (XNLI's harness style: whole
    sentences after an empty context); generation continues the prompt."""
    if task.kind == "choice" and cfg.choice_scoring == "loglik":
        return [task.scored(ex, cfg.prompt_style) for ex in examples]
    return [(task.prompt(ex, cfg.prompt_style), None) for ex in examples]


def prompt_rooms(task, cfg, tokenizer, examples, length):
    """The most tokens each example's prompt keeps within `length` (None: all), as generate and
    choice_logprobs cut it: room for the new tokens, or for the example's longest option."""
    if length is None:
        return [None] * len(examples)
    answers = [max(len(data.answer_ids(tokenizer, context, c)) for c in options)  # as choice_logprobs scores them
               if options is not None else generation_settings(task, cfg)[0]
               for context, options in scored_texts(task, cfg, examples)]
    return [max(length - n, 1) for n in answers]


def fitting_ids(task, cfg, tokenizer, languages, length):
    """Ids of the examples whose prompt fits `length` tokens with its answer in every language:
    eval_fit "subset" draws eval_samples of these, the same ids in every language (the benchmarks
    are parallel: an id is one question in each language), so the languages stay comparable. Found
    from token counts of every language, whichever of them are cached."""
    keep, n_candidates = None, 0
    for lang in languages:
        with data.schema_errors(task, cfg.data_dir):
            examples = task.eval_examples(lang, cfg.data_dir, subset=cfg.eval_subset, seed=cfg.eval_seed, split=cfg.eval_split)
            contexts = [context for context, _ in scored_texts(task, cfg, examples)]
            sizes = map(len, tokenizer(contexts)["input_ids"]) if contexts else []
        rooms = prompt_rooms(task, cfg, tokenizer, examples, length)
        fits = {ex["id"] for ex, size, room in zip(examples, sizes, rooms) if size <= room}
        keep = fits if keep is None else keep & fits
        n_candidates = max(n_candidates, len(examples))
    if not keep:
        raise ValueError(f"eval_fit 'subset': no {task.name} example fits max_length {length} with its answer in "
                         f"every one of {', '.join(languages)}; raise max_length, evaluate fewer languages, or set "
                         f"eval_fit to 'whole' or 'cut'")
    if is_rank0():
        scored = min(len(keep), cfg.eval_samples or len(keep))
        tqdm.write(f"eval_fit subset: {len(keep)} of {n_candidates} {task.name} examples fit {length} tokens in all "
                   f"{len(languages)} languages; {'up to ' if cfg.eval_draw == 'groups' else ''}{scored} scored in each"
                   + (f" (warning: fewer than eval_samples {cfg.eval_samples})" if scored < (cfg.eval_samples or 0) else ""))
    return keep


def evaluate_language(model, tokenizer, task, cfg, lang, device, keep_ids=None, reuse=None):
    """One language's metrics, every prediction, and what its prompts lost to the length limit.

    Args:
        keep_ids: eval_fit "subset": fitting_ids' ids, of which eval_samples are drawn; None: any example.
        reuse: {example id: record} already scored with these settings on a smaller sample (grown):
            those examples keep their records, the others are scored. Every id must be in this sample.
    """
    torch.manual_seed(cfg.eval_seed)  # sampled generation is repeatable per language, resumed or not
    with data.schema_errors(task, cfg.data_dir):
        examples = task.eval_examples(lang, cfg.data_dir, subset=cfg.eval_subset, split=cfg.eval_split,
                                      n=cfg.eval_samples if keep_ids is None else None, seed=cfg.eval_seed,
                                      draw=cfg.eval_draw)
        n_candidates = None
        if keep_ids is not None:
            n_candidates = len(examples)
            examples = data.sample([ex for ex in examples if ex["id"] in keep_ids], cfg.eval_samples, cfg.eval_seed,
                                   cfg.eval_draw)
        scored = scored_texts(task, cfg, examples)
    prompts = [context for context, _ in scored]
    length = eval_length(cfg, model)
    rooms = prompt_rooms(task, cfg, tokenizer, examples, length)
    cuts = [data.fit_prompt(tokenizer, p, room)[1:] for p, room in zip(prompts, rooms)]  # (tokens, characters)
    lost = [dict(tokens_cut=n_tokens, **task.cut_losses(ex, p, n_chars))
            for ex, p, (n_tokens, n_chars) in zip(examples, prompts, cuts)]
    todo = list(range(len(examples)))
    if reuse:
        missing = set(reuse) - {ex["id"] for ex in examples}
        if missing:
            raise ValueError(f"{lang}: the cached result to grow scored {len(missing)} example(s) this sample of "
                             f"{len(examples)} lacks (e.g. {sorted(missing)[:3]}): it was drawn otherwise; pass "
                             f"--overwrite to score the whole sample again")
        todo = [i for i, ex in enumerate(examples) if ex["id"] not in reuse]
    everything = examples
    examples, scored, prompts, lost_todo = ([xs[i] for i in todo] for xs in (examples, scored, prompts, lost))
    records = []
    max_new_tokens, do_sample = generation_settings(task, cfg)
    if task.kind == "choice":
        if cfg.choice_scoring == "generate":  # a greedy answer, matched to an option by its first word
            choices = [task.choices(ex, cfg.prompt_style) for ex in examples]
            texts = generate(model, tokenizer, prompts, batch_size=cfg.eval_batch_size, device=device,
                             max_new_tokens=max_new_tokens, stop=("\n",), do_sample=do_sample,
                             temperature=cfg.temperature, top_p=cfg.top_p, max_length=length)
            preds = [data.match_choice(text, cs) for text, cs in zip(texts, choices)]
            kept = [dict(text=text) for text in texts]
        else:  # the option with the highest log-likelihood
            choices = [options for _, options in scored]
            scores = choice_logprobs(model, tokenizer, prompts, choices, batch_size=cfg.eval_batch_size,
                                     device=device, max_length=length)
            preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
            kept = [dict(logprobs=s) for s in scores]
        for ex, pred, more, cut in zip(examples, preds, kept, lost_todo):
            records.append(dict(id=ex.get("id"), group=ex.get("group"), label=ex["label"], prediction=pred, **more,
                                correct=pred == ex["label"], **cut))
        keys = ["correct"]
    else:
        answers = generate(model, tokenizer, prompts, batch_size=cfg.eval_batch_size, device=device,
                           max_new_tokens=max_new_tokens, stop=task.stop, do_sample=do_sample,
                           temperature=cfg.temperature, top_p=cfg.top_p, max_length=length, with_limit=True)
        scores = [task.score(text, ex) for ex, (text, _) in zip(examples, answers)]
        for ex, (text, at_limit), score, cut in zip(examples, answers, scores, lost_todo):
            records.append(dict(id=ex.get("id"), group=ex.get("group"), prediction=text, at_limit=at_limit, **score,
                                **cut))
        keys = list(task.score("", everything[0])) if everything else []  # the metrics: what score() returns
    fresh = dict(zip(todo, records))
    records = [fresh[i] if i in fresh else reuse[ex["id"]] for i, ex in enumerate(everything)]
    metrics = {k: sum(r[k] for r in records) / len(records) for k in keys} if records else {}
    if task.kind == "choice":
        metrics = dict(accuracy=100.0 * metrics.get("correct", 0.0))
    removed = [c["tokens_cut"] for c in lost if c["tokens_cut"]]
    truncation = dict(eval_fit=cfg.eval_fit, length=length, n_candidates=n_candidates,
                      n_fit=None if keep_ids is None else len(keep_ids), n_cut=len(removed),
                      max_tokens_cut=max(removed, default=0), mean_tokens_cut=sum(removed) / max(len(removed), 1),
                      lost={k: sum(c[k] for c in lost) for k in (lost[0] if lost else {}) if k != "tokens_cut"})
    # generation: answers that ran to max_new_tokens (may be cut short; None for choice scoring by log-likelihood)
    at_limit = [r["at_limit"] for r in records if "at_limit" in r]
    truncation["answers_at_limit"] = sum(at_limit) if at_limit else None
    truncation["max_new_tokens"] = max_new_tokens if at_limit else None
    return dict(language=lang, n=len(records), metrics=metrics, truncation=truncation, predictions=records)


def changed_settings(path, extra):
    """{setting: (cached, now)} where the cached result at `path` differs from this evaluation: a
    language's result depends on config.EVAL_SETTINGS (RunConfig's fields made with eval_setting),
    the adapter's hash, and the languages a "subset" must fit."""
    try:
        cached = json.loads(path.read_text())
        # a setting added after a result was written reads as what it was made with (config.recorded)
        then = dict({k: C.recorded(cached["config"], k) for k in C.EVAL_SETTINGS},
                    adapter_sha256=cached.get("adapter_sha256"), fit_languages=cached.get("fit_languages"),
                    computed_in=_computed_in(cached))
    except (ValueError, KeyError, TypeError):  # unreadable, or written before these were recorded
        return {"file": ("unreadable or without its settings", "-")}
    now = dict({k: extra["config"][k] for k in C.EVAL_SETTINGS}, adapter_sha256=extra.get("adapter_sha256"),
               fit_languages=extra.get("fit_languages"), computed_in=_computed_in(extra))
    return {k: (then[k], now[k]) for k in now if then[k] != now[k]}


def grown(path, extra):
    """A cached language result whose settings differ from this evaluation's only by a larger
    eval_samples (or None: all): {example id: record} of the examples it scored, which the larger
    sample holds too (data.sample draws n rows as the first n draws of the same shuffle, so 400 rows
    are among 1,000 of the same seed; evaluate_language checks every id), else None."""
    changed = changed_settings(path, extra)
    if set(changed) != {"eval_samples"}:
        return None
    before, now = changed["eval_samples"]
    if before is None or (now is not None and now <= before):
        return None
    records = json.loads(path.read_text()).get("predictions") or []
    if not records or any(r.get("id") is None for r in records):
        return None
    return {r["id"]: r for r in records}


def _computed_in(result):
    """The dtype a result was computed in: dtype "auto" depends on the machine (bf16 on CUDA and on CPUs
    with native bf16). Results written before it was recorded were fp32 on the CPU under auto."""
    if "dtype" in result:
        return result["dtype"]
    dtype = result["config"]["dtype"]
    return dtype if dtype != "auto" else "float32" if str(result.get("device", "")).startswith("cpu") else "bfloat16"


def check_cached(cfg, rows_extra, languages, overwrite):
    """Refuse, before any work, to mix cached per-language results made with other settings (another
    eval_samples, a retrained adapter) into this table, unless `overwrite` redoes them."""
    stale = []
    for row, extra in rows_extra.items():
        for lang in languages:
            path = cfg.run_dir / "eval" / row / f"{lang}.json"
            if path.is_file() and grown(path, extra) is not None:
                if is_rank0():
                    print(f"growing {path}: eval_samples {changed_settings(path, extra)['eval_samples']}, "
                          f"scoring only the examples it lacks")
            elif path.is_file() and (changed := changed_settings(path, extra)):
                stale.append(f"{path}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    if stale and not overwrite:
        raise ValueError(f"{len(stale)} cached result(s) were computed with other settings; pass --overwrite to "
                         f"evaluate them again:\n  " + "\n  ".join(stale))
    if is_rank0():
        for line in stale:
            print(f"re-evaluating {line}")


def evaluate_row(model, tokenizer, task, cfg, row, languages, device, extra, keep_ids=None, curves=None):
    """Evaluate one model (row of the table) in every language, resuming finished languages whose
    settings match (check_cached has refused or approved the others); warn of every cut prompt."""
    results = {}
    for lang in tqdm(languages, desc=f"eval {row}", disable=not is_rank0()):
        path = cfg.run_dir / "eval" / row / f"{lang}.json"
        if path.is_file() and not changed_settings(path, extra):
            results[lang] = json.loads(path.read_text())
            continue
        start = time.time()
        reuse = grown(path, extra) if path.is_file() else None
        result = evaluate_language(model, tokenizer, task, cfg, lang, device, keep_ids, reuse)
        before = json.loads(path.read_text())["seconds"] if reuse else 0.0
        result.update(seconds=time.time() - start + before, **extra)  # the grown sample's time, all of it
        results[lang] = result
        if is_rank0():  # every rank has the gathered result; one writes it
            C.write_json_atomic(path, result)
            tqdm.write(f"  {row} {lang}: " + ", ".join(f"{k} {v:.1f}" for k, v in result["metrics"].items()))
            if curves:  # report_to: tensorboard / wandb
                curves.scores(row, lang, result["metrics"])
            cut = result["truncation"]
            if cut["n_cut"]:
                lost = "".join(f", {k} {v}" for k, v in cut["lost"].items())
                tqdm.write(f"  warning: {row} {lang}: {cut['n_cut']} of {result['n']} prompts cut from the left to "
                           f"fit {cut['length']} tokens (up to {cut['max_tokens_cut']} tokens cut, mean "
                           f"{cut['mean_tokens_cut']:.0f}{lost}); see eval_fit")
            if cut.get("answers_at_limit"):
                tqdm.write(f"  warning: {row} {lang}: {cut['answers_at_limit']} of {result['n']} answers ran to "
                           f"max_new_tokens {cut['max_new_tokens']} without stopping and may be cut short; raise "
                           f"max_new_tokens")
    return results


def tables(rows: dict, languages, metric):
    """CSV and Markdown text of rows x languages (+ average) for one metric."""
    header = ["method"] + list(languages) + ["avg"]
    lines = []
    for row, results in rows.items():
        values = [results[l]["metrics"][metric] for l in languages]
        lines.append([row] + [f"{v:.1f}" for v in values] + [f"{sum(values) / len(values):.1f}"])
    out = io.StringIO()
    csv.writer(out).writerows([header] + lines)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(line) + " |" for line in lines]
    return out.getvalue(), "\n".join(md)


def cut_table(rows: dict, languages) -> str:
    """Markdown of rows x languages: prompts cut to fit / prompts scored, what the cut ones lost, and
    how many generated answers ran to max_new_tokens (may be cut short)."""
    lines = ["| cut / scored | " + " | ".join(languages) + " |", "|" + "---|" * (len(languages) + 1)]
    for row, results in rows.items():
        cells = []
        for lang in languages:
            cut = results[lang]["truncation"]
            lost = "".join(f", {k} {v}" for k, v in cut["lost"].items() if v)
            limit = (f", {cut['answers_at_limit']} at the {cut['max_new_tokens']}-token limit"
                     if cut.get("answers_at_limit") else "")
            cells.append(f"{cut['n_cut']}/{results[lang]['n']}{lost}{limit}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(table: dict) -> str:
    """Markdown of {row: {group: value}}: groups as columns, like the paper's Tables 3-4."""
    names = sorted({g for values in table.values() for g in values})
    lines = ["| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += [f"| {row} | " + " | ".join(f"{values[g]:.1f}" if g in values else "-" for g in names) + " |"
              for row, values in table.items()]
    return "\n".join(lines)


def gain(cfg, rows, languages, metric):
    """(markdown, dict): the adapter row's gain over the base row on the same examples, per language,
    overall and non-English, with its paired s.e. and bootstrap interval (stats.gain_table)."""
    english = next((l for l in languages if data.LANGUAGES.get(l, {}).get("name") == "English"), None)
    passages = stats.merge_clusters([stats.clusters_of(rows[cfg.method][l]["predictions"]) for l in languages])
    md, table = stats.gain_table({l: rows[cfg.method][l]["predictions"] for l in languages},
                                 {l: rows["base"][l]["predictions"] for l in languages}, languages, english, metric,
                                 label=f"gain of {cfg.method} over base", seed=cfg.eval_seed, clusters=passages)
    drawn = ("a passage at a time (questions sharing one drawn together; cluster-robust s.e.)" if passages else
             "one question at a time")
    return ("\n\n" + md + "\n\nPaired over the same examples: the mean difference ± its standard error, and a 95% "
            f"bootstrap interval (questions resampled together across the languages that hold the same ones, {drawn}). "
            "A gain within about two s.e. of zero is noise."), table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--runs-file", default=str(C.RUNS_FILE))
    parser.add_argument("--no-base", action="store_true", help="skip the untrained base model's row")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-evaluate cached languages whose settings or adapter changed")
    harness_args = parser.add_argument_group("lm-evaluation-harness (pip install lm-eval; see harness.py)")
    harness_args.add_argument("--harness", metavar="TASKS",
                              help="comma-separated harness tasks, groups or tags, run instead of the run's own task")
    harness_args.add_argument("--harness-limit", type=float, metavar="N",
                              help="the first N documents of each task (a fraction of them if below 1)")
    harness_args.add_argument("--harness-fewshot", type=int, metavar="N",
                              help="few-shot examples (default: each task's)")
    harness_args.add_argument("--harness-include", metavar="DIR", help="a folder of extra task YAMLs")
    C.add_override_args(parser)
    args = parser.parse_args(script_args(argv))
    try:
        cfg = C.get_run(args.run, C.overrides_from_args(args), args.runs_file)
        harness = None
        if args.harness:
            harness = dict(names=[n for n in args.harness.split(",") if n], num_fewshot=args.harness_fewshot,
                           include_path=args.harness_include,
                           limit=int(args.harness_limit) if args.harness_limit and args.harness_limit >= 1
                           else args.harness_limit)
        run(cfg, no_base=args.no_base, overwrite=args.overwrite, harness=harness)
    except (ValueError, OSError) as e:  # bad input (ours say what and where) or an unreadable / unwritable path
        sys.exit(f"error: {e}")
    finally:
        if dist.is_initialized():  # under torchrun
            dist.destroy_process_group()


def run(cfg, no_base=False, overwrite=False, harness=None):
    """Evaluate the run's own task, or with `harness` (keyword arguments of harness.evaluate_run,
    `names` among them) lm-evaluation-harness tasks."""
    if harness is not None:
        try:  # an optional extra: checked before the lock and any work
            import harness as lm_harness
        except ModuleNotFoundError as e:
            if e.name != "lm_eval":
                raise
            raise ValueError(str(e)) from None
    init_distributed()  # first: under torchrun rank 0 takes the lock and tells every rank whether it could
    with runlock.lock_run(cfg.run_dir):  # one writer per run folder: never read an adapter that train.py is writing
        if harness is not None:
            return lm_harness.evaluate_run(cfg, no_base=no_base, **harness)
        return _run(cfg, no_base, overwrite)


def _train_sources(cfg):
    """Training examples per source, as train.py recorded them (None for the base model, or a run
    trained before they were recorded), so a table says what its adapter learnt from."""
    try:
        return json.loads((cfg.run_dir / "train_log.json").read_text()).get("train_sources")
    except (OSError, ValueError):
        return None


def _run(cfg, no_base, overwrite):
    task = data.load_task(cfg.task)
    languages = cfg.eval_languages or list(task.languages)
    data.check_languages(task, languages)
    adapter_dir = cfg.run_dir / "adapter"
    if cfg.method != "base" and not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"run {cfg.name!r} has no trained adapter at {adapter_dir}; "
                         f"run `python train.py --run {cfg.name}` first")
    rank, _, rank_device = init_distributed()
    curves = Curves(cfg, rank)  # before the model loads: a missing logger package fails now
    device, dtype = C.device_and_dtype(cfg)
    device = rank_device or device
    if rank == 0:
        print(models.dtype_message(cfg.dtype, device, dtype))
    model, tokenizer = models.load_model(cfg.model, dtype=dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    model.eval()
    # a subset depends on the languages it must fit in, which are not among config.EVAL_SETTINGS
    meta = dict(C.provenance(cfg), fit_languages=languages if cfg.eval_fit == "subset" else None)
    rows_extra = {}
    if not no_base or cfg.method == "base":
        rows_extra["base"] = dict(meta, adapter=None, adapter_sha256=None)
    adapter_sha256 = None
    if cfg.method != "base":
        # check the adapter (method, model shape) before spending time on the base row
        adapters.read_adapter_config(model, adapter_dir, method=cfg.method)
        adapter_sha256 = data.file_sha256(adapter_dir / "adapter.safetensors")
        rows_extra[cfg.method] = dict(meta, adapter=str(adapter_dir), adapter_sha256=adapter_sha256)
    check_cached(cfg, rows_extra, languages, overwrite)
    length = eval_length(cfg, model)
    keep_ids = fitting_ids(task, cfg, tokenizer, languages, length) if cfg.eval_fit == "subset" else None
    rows = {}
    if "base" in rows_extra:
        adapters.set_attn_backend(model, cfg.attn_backend)
        rows["base"] = evaluate_row(model, tokenizer, task, cfg, "base", languages, device, rows_extra["base"],
                                    keep_ids, curves)
    if cfg.method != "base":
        adapters.load_adapter(model, adapter_dir, attn_backend=cfg.attn_backend, method=cfg.method)
        model.eval()
        rows[cfg.method] = evaluate_row(model, tokenizer, task, cfg, cfg.method, languages, device,
                                        rows_extra[cfg.method], keep_ids, curves)
    curves.close()

    metric = task.primary_metric
    csv_text, md = tables(rows, languages, metric)
    groups = {by: {r: data.group_averages({l: res[l]["metrics"][metric] for l in languages}, by)
                   for r, res in rows.items()} for by in ("script", "family", "resource")}
    summary = dict(meta, adapter_sha256=adapter_sha256, task=cfg.task, metric=metric, languages=languages,
                   rows={r: {l: res[l]["metrics"] for l in languages} for r, res in rows.items()}, groups=groups,
                   truncation={r: {l: res[l]["truncation"] for l in languages} for r, res in rows.items()},
                   train_sources=_train_sources(cfg))
    gain_md = ""
    if "base" in rows and cfg.method in rows:
        gain_md, summary["gain"] = gain(cfg, rows, languages, metric)
    if rank != 0:
        return
    C.write_json_atomic(cfg.run_dir / "results.json", summary)
    grouped = "\n\n".join(f"By {by}:\n\n{group_table(table)}" for by, table in groups.items())
    fit = f", {len(keep_ids)} examples fit in every language" if keep_ids is not None else ""
    cuts = (f"Prompts cut from the left to fit {length} tokens with the answer (eval_fit {cfg.eval_fit}{fit}):"
            f"\n\n{cut_table(rows, languages)}")
    C.write_text_atomic(cfg.run_dir / "results.csv", csv_text)
    C.write_text_atomic(cfg.run_dir / "results.md",
                        f"# {cfg.name}: {cfg.task} {metric}\n\n{md}{gain_md}\n\n{cuts}\n\n{grouped}\n")
    print(f"\n{cfg.name}: {cfg.task} {metric} ({cfg.model}, {device})\n{md}{gain_md}\n\n{cuts}\n\n{grouped}\n\n"
          f"written to {cfg.run_dir}")
    if cfg.push_to_hub and cfg.method != "base":  # again after train.py, last: the card now shows the scores
        share.push_adapter(adapter_dir, cfg.push_to_hub)


if __name__ == "__main__":
    main()
