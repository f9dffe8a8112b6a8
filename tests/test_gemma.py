"""Gemma 3 through every method: sliding-window layers, k_norm, query_pre_attn_scalar, scaled embeddings.

A tiny random Gemma 3 text model with a window of 4 keys, sequences of 13 tokens, and sliding and full
layers mixed. With nothing attached, the "xprefix" attention (torch and kernel) must be the model's own
attention; with a prefix, a layer's output must be plain reference math in which the window hides old
sequence keys but never the prefix. Real weights (`gemma3-270m`) are not needed here.
"""
import copy
import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

import adapters
import models
from conftest import logits_and_grads
from kernels.reference import prefix_attention_ref

WINDOW = 4
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
BACKENDS = ["torch", "triton"]  # triton runs under TRITON_INTERPRET=1 on the CPU (conftest)
METHODS = ["prefix", "adapter", "soft_prompt", "lora"]


def tiny_gemma(attn_implementation="eager", window=WINDOW):
    # query_pre_attn_scalar differs from head_dim, so a path that ignores `scaling` fails
    config = Gemma3TextConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=40,
                              sliding_window=window, layer_types=LAYER_TYPES, max_position_embeddings=256,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():  # Gemma's RMSNorms scale by (1 + w) and start at w = 0: make the norms matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


def batch(seed=1, b=2, t=13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def with_method(base, method, backend):
    """A copy of `base` with `method` attached (None: only the "xprefix" attention), made non-trivial:
    the gate open, LoRA's B non-zero."""
    model = copy.deepcopy(base)
    if method is None:
        adapters.set_attn_backend(model, backend)
        return model
    torch.manual_seed(2)  # LoRA's A draws from the global generator
    adapters.attach(model, method, n_prefix_tokens=3, attn_backend=backend)
    for name, p in model.named_parameters():
        if name.endswith("gate"):
            p.data.fill_(0.7)
        elif "lora_B" in name:
            p.data.normal_(0.0, 0.1)
    return model.eval()


# ---- no adapter: the model's own attention ------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("own", ["eager", "sdpa"])
def test_xprefix_attention_is_the_models_own(own, backend):
    base = tiny_gemma(own)
    ids, mask, positions = batch()
    with torch.no_grad():
        ref = base(ids, attention_mask=mask, position_ids=positions).logits
        out = with_method(base, None, backend)(ids, attention_mask=mask, position_ids=positions).logits
        unpadded = with_method(base, None, backend)(ids[:1]).logits  # no mask at all: the plain causal path
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unpadded[0], ref[0], rtol=1e-5, atol=1e-5)
    # the window binds: a model without it gives other logits
    wide = copy.deepcopy(base)
    wide.config.layer_types = ["full_attention"] * 4
    for layer in wide.model.layers:
        layer.self_attn.sliding_window = None
    with torch.no_grad():
        assert (wide(ids[:1]).logits - ref[:1]).abs().max() > 1e-3


# the interpreted kernel is slow: soft prompts and LoRA reach it as the no-adapter case does
@pytest.mark.parametrize("method, backend", [(m, "torch") for m in [None] + METHODS]
                         + [(m, "triton") for m in (None, "prefix", "adapter")])
def test_cached_decoding_matches_full_forward(method, backend):
    """Prefill 6 tokens (past the window, so sliding layers' caches are cut), then decode one at a time."""
    model = with_method(tiny_gemma(), method, backend)
    ids, mask, positions = batch(t=10)
    prefill = 6
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=positions).logits
        # the cache's keyword: `cache` from transformers 5.24 on (`past_key_values` goes in 5.40)
        key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = {key: DynamicCache(config=model.config)}
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=positions[:, :prefill],
                       use_cache=True, **cache).logits]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                               use_cache=True, **cache).logits)
    cached = torch.cat(steps, 1)
    valid = mask.bool()
    torch.testing.assert_close(cached[valid], full[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, backend", [(m, "torch") for m in [None] + METHODS]
                         + [(m, "triton") for m in ("prefix", "adapter")])
def test_choices_scored_after_one_cached_context_match_a_forward_per_choice(method, backend):
    """evaluate.score_choices reads a context once and each choice after a copy of its cache; with
    contexts past the window (sliding layers' caches cut), choices of 0-4 tokens and 2-3 choices,
    every score must be one plain forward pass over context + choice."""
    import evaluate
    model = with_method(tiny_gemma(), method, backend)
    g = torch.Generator().manual_seed(3)
    draw = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    contexts = [draw(n) for n in (9, 5, 12, 7)]
    choices = [[draw(2), draw(1), draw(4)], [draw(1), draw(1)], [draw(3), [], draw(2)], [draw(4), draw(3), draw(1)]]
    with torch.no_grad():
        got = evaluate.score_choices(model, contexts, choices, 0, batch_size=3, device="cpu")
        adapters.set_attn_backend(model, "torch")  # the reference in plain torch (kernel = torch: tested below)
        for context, options, scores in zip(contexts, choices, got):
            for option, score in zip(options, scores):
                if not option:
                    assert score == 0.0
                    continue
                logits = model(torch.tensor([context + option])).logits[0, len(context) - 1:-1].float()
                want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(option)[:, None]).sum().item()
                assert score == pytest.approx(want, abs=2e-5, rel=1e-5), (method, backend, context, option)


# ---- each method: kernel and torch agree; the prefix is plain math ------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_kernel_matches_torch_path(method):
    """Logits and every trainable gradient agree between attn_backend triton and torch."""
    base = tiny_gemma()
    ids, mask, positions = batch()
    outs = {}
    for backend in BACKENDS:
        model = with_method(base, method, backend)
        outs[backend] = logits_and_grads(model, ids, mask, positions)
    torch.testing.assert_close(outs["triton"][0], outs["torch"][0], rtol=1e-5, atol=1e-5)
    assert outs["triton"][1].keys() == outs["torch"][1].keys()
    for name, grad in outs["torch"][1].items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(outs["triton"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _layer_reference(attn, hidden, position_embeddings, key_start):
    """One attention layer with a prefix, by hand: q/k norms, rotary on the sequence only, prefix keys
    through k_norm, the score scale from query_pre_attn_scalar, the window on sequence keys only."""
    config, state = attn.config, attn.prefix_adapter
    b, t, _ = hidden.shape
    d = config.head_dim
    q = attn.q_norm(attn.q_proj(hidden).view(b, t, -1, d)).transpose(1, 2)  # (B, Hq, T, D)
    k = attn.k_norm(attn.k_proj(hidden).view(b, t, -1, d)).transpose(1, 2)  # (B, Hkv, T, D)
    v = attn.v_proj(hidden).view(b, t, -1, d).transpose(1, 2)  # (B, Hkv, T, D)
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    n_prefix = state.prefix.shape[0]
    pk = attn.k_norm((state.prefix @ attn.k_proj.weight.T).view(n_prefix, -1, d)).transpose(0, 1)  # (Hkv, P, D)
    pv = (state.prefix @ attn.v_proj.weight.T).view(n_prefix, -1, d).transpose(0, 1)  # (Hkv, P, D)
    window = config.sliding_window if config.layer_types[attn.layer_idx] == "sliding_attention" else None
    out = prefix_attention_ref(q, k, v, pk, pv, state.gate, scale=config.query_pre_attn_scalar ** -0.5,
                               key_start=key_start, window=window)  # (B, Hq, T, D)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["prefix", "adapter"])
def test_prefix_layers_match_plain_reference(method, backend):
    model = with_method(tiny_gemma(), method, backend)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.prefix_adapter.prefix.add_(torch.randn_like(layer.self_attn.prefix_adapter.prefix))
    ids, mask, positions = batch()
    seen = {}

    def capture(module, args, kwargs, output):
        seen[module.layer_idx] = (kwargs["hidden_states"], kwargs["position_embeddings"], output[0])

    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(ids, attention_mask=mask, position_ids=positions)
        key_start = (1 - mask).sum(-1)  # left padding
        for layer in model.model.layers:
            hidden, position_embeddings, out = seen[layer.self_attn.layer_idx]
            ref = _layer_reference(layer.self_attn, hidden, position_embeddings, key_start)
            torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)


# ---- soft prompt: Gemma scales embeddings by sqrt(hidden) ----------------------------------------

def test_soft_prompt_starts_on_the_embedding_scale_and_is_inserted_unscaled():
    base = tiny_gemma()
    model = with_method(base, "soft_prompt", "torch")
    prompt = model.model.soft_prompt.prompt
    tokens = base.model.embed_tokens(torch.arange(97))  # what the layers see for real tokens
    assert base.model.embed_tokens.embed_scale.item() == pytest.approx(64 ** 0.5)
    # every prompt row is a real token's scaled embedding
    assert all(torch.isclose(tokens, row).all(-1).any() for row in prompt)
    ids, _, _ = batch()
    with torch.no_grad():
        out = model(ids).logits
        embeds = torch.cat([prompt[None].expand(ids.shape[0], -1, -1), base.model.embed_tokens(ids)], 1)
        ref = base(inputs_embeds=embeds).logits[:, prompt.shape[0]:]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---- the registry's Gemma 3 270M, offline ---------------------------------------------------------

def test_registry_gemma3_270m_shape():
    model = models.meta_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    config = model.config
    assert [i for i, t in enumerate(config.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert config.sliding_window == 512 and model.model.layers[0].self_attn.scaling == 256 ** -0.5
    adapters.attach(model, "adapter")  # all 18 layers (fewer than 30)
    assert adapters.count_trainable(model) == 10 * 640 * 18 + 4 * 18
