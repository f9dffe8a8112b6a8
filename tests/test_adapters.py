"""Each method against straightforward math, its invariants, its parameter count, save/load."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

import adapters
import models
from conftest import logits_and_grads


def tiny(config_class=LlamaConfig, **kw):
    cfg = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
               num_key_value_heads=2, max_position_embeddings=256)
    cfg.update(kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**cfg)).eval()


def batch(seed=1, b=3, t=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :4] = 0  # left padding, as in batched evaluation
    mask[2, :1] = 0
    return ids, mask


def attached(base, method, **kw):
    model = copy.deepcopy(base)
    adapters.attach(model, method, n_prefix_tokens=kw.pop("n_prefix_tokens", 5), attn_backend="torch", **kw)
    return model.eval()


# ---- parameter counts: the paper's figures on the Llama-3.1-8B shape -------------------------------

@pytest.mark.parametrize("method, kw, expected", [
    ("prefix", {}, 1_228_800),
    ("adapter", {}, 1_228_800 + 30 * 32),  # plus one gate per head per adapted layer
    ("lora", {}, 2_359_296),
    ("lora", {"lora_rank": 128}, 75_497_472),
    ("soft_prompt", {}, 40_960),
    ("base", {}, 0),
])
def test_trainable_params_llama8b(method, kw, expected):
    model = models.meta_model("llama3.1-8b")
    adapters.attach(model, method, **kw)
    assert adapters.count_trainable(model) == expected


def test_trainable_params_formula_other_shapes():
    model = models.meta_model("llama3.2-1b")  # 16 layers: all adapted by default
    adapters.attach(model, "prefix")
    assert adapters.count_trainable(model) == 10 * 2048 * 16
    model = models.meta_model("mistral-small-24b")
    adapters.attach(model, "lora", lora_rank=4)
    hidden, kv = 5120, 8 * 128
    assert adapters.count_trainable(model) == 40 * 4 * ((hidden + 32 * 128) + 2 * (hidden + kv))
    full = models.meta_model("llama3.2-1b")
    adapters.attach(full, "full")
    assert adapters.count_trainable(full) == sum(p.numel() for p in full.parameters())


# ---- invariants --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["adapter", "lora", "base"])
def test_zero_initialised_methods_keep_base_logits(method):
    base = tiny()
    ids, mask = batch()
    with torch.no_grad():
        ref = base(ids, attention_mask=mask).logits
        out = attached(base, method)(ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "soft_prompt"])
def test_prefix_and_soft_prompt_change_logits(method):
    base = tiny()
    ids, mask = batch()
    with torch.no_grad():
        ref = base(ids, attention_mask=mask).logits
        out = attached(base, method)(ids, attention_mask=mask).logits
    assert (out - ref)[mask.bool()].abs().max() > 1e-3


def test_only_method_parameters_train():
    base = tiny()
    for method, prefix in [("prefix", "prefix_adapter.prefix"), ("soft_prompt", "soft_prompt.prompt"),
                           ("lora", "lora_")]:
        names = [n for n, p in attached(base, method).named_parameters() if p.requires_grad]
        assert names and all(prefix in n for n in names), (method, names)


# ---- each method against straightforward math -----------------------------------------------------

def reference_attention(q, k, v, pk, pv, gate, mask, scale):
    """Loops-and-softmax reference: q (B,H,M,D), k/v (B,Hkv,N,D), pk/pv (Hkv,P,D), mask (B,1,M,N) bool."""
    b, h, m, d = q.shape
    groups = h // k.shape[1]
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kh, vh, pkh, pvh = k[bi, hi // groups], v[bi, hi // groups], pk[hi // groups], pv[hi // groups]
            s_seq = (q[bi, hi] @ kh.T) * scale
            s_seq = s_seq.masked_fill(~mask[bi, 0], -math.inf)
            s_pre = (q[bi, hi] @ pkh.T) * scale
            if gate is None:
                w = torch.softmax(torch.cat([s_pre, s_seq], -1), -1)
                out[bi, hi] = w @ torch.cat([pvh, vh])
            else:
                seq = torch.softmax(s_seq, -1).nan_to_num(0.0)  # a row that sees nothing gives zeros
                out[bi, hi] = seq @ vh + torch.tanh(gate[hi]) * (torch.softmax(s_pre, -1) @ pvh)
    return out


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("m, n", [(7, 7), (1, 9), (4, 10)])
def test_torch_prefix_attention_matches_reference(gated, m, n):
    g = torch.Generator().manual_seed(0)
    b, h, hkv, d, p = 2, 6, 2, 8, 3
    q, k, v = (torch.randn(b, x, y, d, generator=g, dtype=torch.float64) for x, y in ((h, m), (hkv, n), (hkv, n)))
    pk, pv = torch.randn(2, hkv, p, d, generator=g, dtype=torch.float64)
    gate = torch.randn(h, generator=g, dtype=torch.float64) if gated else None
    mask = torch.ones(m, n, dtype=torch.bool).tril(n - m)[None, None].repeat(b, 1, 1, 1)
    mask[1, :, :, :2] = False  # a left-padded row
    ref = reference_attention(q, k, v, pk, pv, gate, mask, 0.3)
    out = adapters.torch_prefix_attention(q, k, v, pk, pv, gate, mask, 0.3)
    torch.testing.assert_close(out, ref)
    if m == n:  # mask None means plain causal
        out = adapters.torch_prefix_attention(q, k, v, pk, pv, gate, None, 0.3)
        torch.testing.assert_close(out[0], reference_attention(q, k, v, pk, pv, gate, mask[:1].expand(b, -1, -1, -1)
                                                               .clone().fill_(True).tril_(n - m), 0.3)[0])


def test_prefix_keys_come_from_frozen_projections_without_rotary():
    model = attached(tiny(), "prefix", n_adapted_layers=2)
    layers = model.model.layers
    assert not hasattr(layers[0].self_attn, "prefix_adapter")  # only the last 2 of 3
    attn = layers[2].self_attn
    pk, pv = attn.prefix_adapter.keys_values(attn)
    prefix = attn.prefix_adapter.prefix
    torch.testing.assert_close(pk, (prefix @ attn.k_proj.weight.T).view(5, 2, 8).transpose(0, 1))
    torch.testing.assert_close(pv, (prefix @ attn.v_proj.weight.T).view(5, 2, 8).transpose(0, 1))


def test_soft_prompt_equals_prepended_embeddings():
    base = tiny()
    model = attached(base, "soft_prompt")
    ids, _ = batch()
    prompt = model.model.soft_prompt.prompt
    with torch.no_grad():
        out = model(ids).logits
        embeds = torch.cat([prompt[None].expand(ids.shape[0], -1, -1), base.model.embed_tokens(ids)], 1)
        ref = base(inputs_embeds=embeds).logits[:, prompt.shape[0]:]
    torch.testing.assert_close(out, ref)


def test_lora_matches_explicit_update_and_merge_is_idempotent():
    base = tiny()
    model = attached(base, "lora", lora_rank=2, lora_alpha=4.0)
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj", "v_proj"):
            torch.nn.init.normal_(getattr(layer.self_attn, name).lora_B)
    x = torch.randn(5, 48)
    lin = model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(lin(x), x @ lin.base.weight.T + 2.0 * (x @ lin.lora_A.T @ lin.lora_B.T))
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
        for m in model.modules():
            if isinstance(m, adapters.LoRALinear):
                m.merge()
                m.merge()
        after = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


# ---- padding, KV cache, generation ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt", "lora"])
def test_left_padding_does_not_change_valid_logits(method):
    model = attached(tiny(), method)
    if method == "adapter":
        for layer in model.model.layers:
            layer.self_attn.prefix_adapter.gate.data.fill_(0.7)
    ids, mask = batch()
    with torch.no_grad():
        # prefix keys carry no rotary embedding, so q.pk sees the query's absolute position: a
        # left-padded row needs positions counted from its first real token (as generate() does)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = model(ids, attention_mask=mask, position_ids=positions).logits
        alone = model(ids[1:2, 4:]).logits
    torch.testing.assert_close(padded[1, 4:], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt"])
def test_cached_generation_equals_uncached(method):
    model = attached(tiny(), method)
    if method == "adapter":
        for layer in model.model.layers:
            layer.self_attn.prefix_adapter.gate.data.fill_(0.7)
    ids, mask = batch()
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_gradients_reach_only_the_adapter():
    model = attached(tiny(), "adapter")
    ids, mask = batch()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    attn = model.model.layers[-1].self_attn
    assert attn.prefix_adapter.gate.grad.abs().sum() > 0  # gate gets gradient at zero...
    assert attn.prefix_adapter.prefix.grad.abs().sum() == 0  # ...the prefix only once the gate opens
    assert attn.q_proj.weight.grad is None


# ---- save / load ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt", "lora"])
def test_save_load_round_trip(method, tmp_path):
    base = tiny()
    model = attached(base, method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    adapters.save_adapter(model, tmp_path / "a")
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert set(saved) == set(adapters.trainable_state_dict(model))
    loaded = adapters.load_adapter(copy.deepcopy(base), tmp_path / "a", attn_backend="torch").eval()
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_loading_onto_another_shape_is_a_clear_error(tmp_path):
    model = attached(tiny(), "prefix")
    adapters.save_adapter(model, tmp_path / "a")
    other = tiny(hidden_size=24, num_attention_heads=3, num_key_value_heads=1)
    with pytest.raises(ValueError, match="another model shape.*hidden_size"):
        adapters.load_adapter(other, tmp_path / "a")
    with pytest.raises(ValueError, match="holds no adapter"):
        adapters.load_adapter(tiny(), tmp_path / "missing")


def test_saved_config_is_the_adapter_config_then_the_model_shape(tmp_path):
    """adapter_config.json: AdapterConfig's fields verbatim (n_adapted_layers resolved), the model's
    shape, then what the caller adds; loading it back attaches the same AdapterConfig."""
    model = attached(tiny(), "lora", lora_rank=2)
    adapters.save_adapter(model, tmp_path / "a", extra=dict(run="x"))
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert list(saved) == ["method", "n_prefix_tokens", "n_adapted_layers", "lora_rank", "lora_alpha", "model", "run"]
    assert model.xprefix_config == adapters.AdapterConfig("lora", n_prefix_tokens=5, n_adapted_layers=3, lora_rank=2)
    assert adapters.load_adapter(tiny(), tmp_path / "a").xprefix_config == model.xprefix_config


def test_mistral_models_attach_too():
    base = tiny(MistralConfig, sliding_window=None)
    ids, mask = batch()
    for method in ("prefix", "adapter", "lora", "soft_prompt"):
        with torch.no_grad():
            out = attached(base, method)(ids, attention_mask=mask).logits
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("kw, message", [
    (dict(method="nope"), "method 'nope' is not one of"),
    (dict(method="prefix", n_prefix_tokens=0), "n_prefix_tokens must be a positive integer"),
    (dict(method="prefix", n_adapted_layers=4), r"n_adapted_layers must be in 1..3 \(the model has 3 layers\)"),
    (dict(method="lora", lora_rank=-1), "lora_rank must be a positive integer"),
    (dict(method="prefix", attn_backend="cuda"), "attn_backend 'cuda' is not one of"),
])
def test_bad_options_are_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        adapters.attach(tiny(), **kw)


# ---- the Triton kernel behind the same hook --------------------------------------------------------

@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt"])
def test_tiny_llama_with_kernel_matches_torch_path(method):
    """Logits and every trainable gradient agree between attn_backend triton and torch (on the CPU
    the kernel runs under TRITON_INTERPRET=1, set by conftest)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = tiny(hidden_size=64, num_attention_heads=4, num_key_value_heads=2).to(device)  # head dim 16
    ids, mask = (t.to(device) for t in batch())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    outs = {}
    for backend in ("torch", "triton"):
        model = copy.deepcopy(base)
        adapters.attach(model, method, n_prefix_tokens=5, attn_backend=backend)
        if method == "adapter":
            for layer in model.model.layers:
                layer.self_attn.prefix_adapter.gate.data.fill_(0.7)
        outs[backend] = logits_and_grads(model, ids, mask, positions)
    torch.testing.assert_close(outs["triton"][0], outs["torch"][0], rtol=1e-4, atol=1e-4)
    assert outs["triton"][1].keys() == outs["torch"][1].keys()
    for name, grad in outs["torch"][1].items():
        torch.testing.assert_close(outs["triton"][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_frozen_head_multiplies_the_last_position_in_one_product(method):
    """Generation feeds the head hidden[:, -1:, :], a strided view; with the head frozen, torch's
    matmul then copied the whole head weight per row (aten::bmm over (B, H, vocab)). attach makes the
    head's input contiguous: the same logits, through one matrix product."""
    model = tiny(vocab_size=4099).eval()
    ids = torch.randint(0, 4099, (5, 9))
    adapters.attach(model, method)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        out = model(input_ids=ids, logits_to_keep=1).logits
    copies = [e for e in prof.events() if e.name == "aten::bmm" and any(4099 in s for s in e.input_shapes if s)]
    assert not copies, [e.input_shapes for e in copies]
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1:]
    torch.testing.assert_close(out, full)
