"""evaluate.generate: prompts that begin alike read their common prefix once, and decode as if each
were read whole.

Tiny random models: a Gemma 3 (sliding-window layers, window 24, so decoding runs past the window
after the holes are closed) through every method and the plain Llama of conftest with a tokenizer,
against transformers' own generate(). Real weights are not needed here.
"""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import adapters
import evaluate
from test_gemma import METHODS, tiny_gemma, with_method


def test_prompts_group_by_a_prefix_that_is_most_of_each():
    passage, other = list(range(10, 30)), list(range(40, 56))
    rows = [passage + [1, 2], [5] + passage, passage + [3, 4, 5, 6], other + [7], passage + [1, 3],
            other + [8, 9], [60, 61], passage[:4] + [99] * 4]
    groups, shared = evaluate.shared_prefixes(rows)
    assert groups[0] == groups[2] == groups[4] and groups[3] == groups[5]
    assert len({groups[0], groups[3], groups[1], groups[6], groups[7]}) == 5  # the rest alone
    # a group shares what all its rows share: the passage, not the 1 two of them go on with
    assert [shared[i] for i in (0, 2, 4)] == [20] * 3 and [shared[i] for i in (3, 5)] == [16] * 2
    assert [shared[i] for i in (1, 6, 7)] == [0] * 3  # 4 of 8 tokens is not most of either row
    # a row whose whole text is the others' prefix leaves itself one token to read
    groups, shared = evaluate.shared_prefixes([passage, passage + [1], passage + [2, 3]])
    assert len(set(groups)) == 1 and shared == [19] * 3
    # a prefix under half of the longer row does not group (at least half of each row), one over it does
    assert evaluate.shared_prefixes([passage[:10] + [1] * 11, passage[:10] + [2] * 11])[1] == [0, 0]
    assert evaluate.shared_prefixes([passage[:11] + [1] * 10, passage[:11] + [2] * 8])[1] == [11, 11]


def _rows():
    g = torch.Generator().manual_seed(5)
    draw = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    a, b = draw(10), draw(13)
    return [a + draw(2), b + draw(1), a + draw(5), draw(9), b + draw(4), a + draw(3)]


def _greedy_logits(model, rows, heads, max_new_tokens):
    seen = {}

    def pick(logits, alive):
        for r, step in zip(alive, logits):
            seen.setdefault(r, []).append(step)
        return logits.argmax(-1)

    new = evaluate.decode_rows(model, rows, heads, pad_id=0, device="cpu", max_new_tokens=max_new_tokens,
                               stop_at=lambda r, tokens: tokens[-1] == 2 or len(tokens) >= 5 + r, pick=pick)
    return new, seen


@pytest.mark.parametrize("method", [None] + METHODS)
def test_shared_prefixes_decode_as_whole_rows_read_alone(method):
    """Each step's logits equal one uncached forward pass over the row alone and its tokens so far;
    rows stop at different steps (and leave the batch), decoding runs past the window of 24."""
    model = with_method(tiny_gemma(window=24), method, "torch")
    rows = _rows()
    _, heads = evaluate.shared_prefixes(rows)
    assert sorted(heads) == [0, 10, 10, 10, 13, 13]
    with torch.no_grad():
        new, seen = _greedy_logits(model, rows, heads, max_new_tokens=20)
        whole, whole_seen = _greedy_logits(model, rows, [0] * len(rows), max_new_tokens=20)
        assert new == whole
        for r, row in enumerate(rows):
            assert 1 <= len(new[r]) <= 5 + r
            text = torch.tensor([row + new[r][:-1]])
            want = model(text).logits[0, len(row) - 1:].float()
            got = torch.stack(seen[r])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
            torch.testing.assert_close(torch.stack(whole_seen[r]), want, rtol=1e-5, atol=2e-5)
        assert max(len(row) + len(t) for row, t in zip(rows, new)) > 24  # the window was passed


def test_shared_prefixes_past_a_sliding_window_are_refused():
    model = tiny_gemma()  # window 4: the prefixes of 10 and 13 tokens outgrow the sliding layers' cache
    rows = _rows()
    with torch.no_grad(), pytest.raises(RuntimeError, match="past a sliding window"):
        _greedy_logits(model, rows, evaluate.shared_prefixes(rows)[1], max_new_tokens=3)


def _per_choice(model, context, option):
    logits = model(torch.tensor([context + option])).logits[0, len(context) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(option)[:, None]).sum().item()


def test_choice_scores_take_the_final_logit_softcap_and_any_chunk(monkeypatch):
    """Scores go through the LM head as the model's forward does, with a final logit softcap (Gemma 2's
    kind; Gemma 3's is None) and whether the states fill one chunk of the head or several."""
    model = tiny_gemma(window=22)
    model.config.final_logit_softcapping = 0.5  # small: the cap moves every score
    contexts = _rows()
    g = torch.Generator().manual_seed(8)
    choices = [[torch.randint(3, 97, (n,), generator=g).tolist() for n in (1, 3, 5)] for _ in contexts]
    with torch.no_grad():
        want = [[_per_choice(model, c, o) for o in options] for c, options in zip(contexts, choices)]
        real = evaluate.token_logprobs
        for chunk in (64, 3):
            monkeypatch.setattr(evaluate, "token_logprobs", lambda *a, chunk=chunk, **kw: real(*a, chunk=chunk))
            got = evaluate.score_choices(model, contexts, choices, 0, batch_size=4, device="cpu")
            for g_, w in zip(got, want):
                assert g_ == pytest.approx(w, abs=2e-5, rel=1e-5), chunk
        model.config.final_logit_softcapping = None
        assert evaluate.score_choices(model, contexts, choices, 0, batch_size=4, device="cpu")[0] != \
            pytest.approx(want[0], abs=1e-3)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


PASSAGE = "Context: The river flows to the sea and the boats go with it, far away from the old town. "
PROMPTS = [PASSAGE + "Question: Where does the river flow? Answer:", "Premise: a man plays guitar. Answer:",
           PASSAGE + "Question: Who goes? Answer:", PASSAGE + "Question: What flows to the sea in the story? Answer:",
           "Context: a man. Question: Who plays guitar? Answer:"]


@pytest.mark.parametrize("method", ["base"] + METHODS)
def test_generate_gives_what_transformers_generate_gives(tiny, method):
    model, tokenizer = tiny
    if method != "base":
        model = copy.deepcopy(model)
        torch.manual_seed(2)
        adapters.attach(model, method, n_prefix_tokens=3, attn_backend="torch")
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.data.fill_(0.7)
            elif "lora_B" in name:
                p.data.normal_(0.0, 0.1)
    encoded = [tokenizer(p).input_ids for p in PROMPTS]
    assert sum(evaluate.shared_prefixes(encoded)[1]) > 0  # the three questions on the passage share it
    got = evaluate.generate(model, tokenizer, PROMPTS, batch_size=4, device="cpu", max_new_tokens=7, with_limit=True)
    want = []
    for ids in encoded:
        ids = torch.tensor([ids])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
        want.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert [text for text, _ in got] == want
    # sampled: the same draws whether the passage is read once or with every question
    sample = lambda share: evaluate.generate(model, tokenizer, PROMPTS, batch_size=4, device="cpu",  # noqa: E731
                                             max_new_tokens=7, do_sample=True, temperature=0.7, share=share)
    torch.manual_seed(0)
    shared = sample(True)
    torch.manual_seed(0)
    assert sample(False) == shared


def test_the_fused_kernel_reads_every_prompt_whole(tiny, monkeypatch):
    """attn_backend 'triton' applies left padding only: no prefix is shared (decode_rows gets no heads).
    (The tiny Llama's head dim of 8 is below the kernel's, so decoding itself is not run here.)"""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    adapters.attach(model, "prefix", n_prefix_tokens=3, attn_backend="torch")
    heads_seen = []
    monkeypatch.setattr(evaluate, "decode_rows", lambda m, rows, heads, **kw: heads_seen.append(heads) or
                        [[tokenizer.eos_token_id]] * len(rows))
    evaluate.generate(model, tokenizer, PROMPTS, batch_size=8, device="cpu", max_new_tokens=1)
    assert len(heads_seen) == 1 and sum(map(bool, heads_seen[0])) == 3  # the three questions on the passage
    heads_seen.clear()
    adapters.set_attn_backend(model, "triton")
    evaluate.generate(model, tokenizer, PROMPTS, batch_size=8, device="cpu", max_new_tokens=1)
    assert len(heads_seen) == 1 and not any(heads_seen[0])
