"""benchmarks/bench_peft.py compares equal work. On a tiny GQA Llama, xprefix's Triton kernel
(interpreted on the CPU), its PyTorch path and PEFT, with PEFT's parameters set from ours, compute
the same training loss and gradients, the same option log-likelihoods and the same greedy tokens.
Also: activation checkpointing leaves every method's gradients unchanged, the benchmark leaves its
base model as it found it, and it runs end to end, quoting failures.

PEFT is a test dependency (requirements-dev.txt, installed by `make setup`).
"""
import copy
import inspect
import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import rotate_half

import adapters
from conftest import ROOT

try:
    import peft  # noqa: F401
except ImportError as e:  # a clear failure, not a skip: these tests are how the benchmark is trusted
    raise ImportError("tests/test_bench_peft.py needs PEFT: pip install -r requirements-dev.txt") from e

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_peft as B  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_base(n_layers=2):
    config = B.tiny_config()  # GQA: 4 query heads on 2 key/value heads, head dim 16
    config.num_hidden_layers = n_layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(DEVICE).eval().requires_grad_(False)


def nontrivial(model, seed=0):
    """Gates and LoRA B away from zero, so every trainable tensor changes the output. One gate value
    per layer, shared by its heads: PEFT's AdaptionPrompt has a single gate per layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            state = getattr(layer.self_attn, "prefix_adapter", None)
            if state is not None and state.gate is not None:
                state.gate.fill_(0.4 + 0.3 * i)
            for name in ("q_proj", "k_proj", "v_proj"):
                proj = getattr(layer.self_attn, name)
                if isinstance(proj, adapters.LoRALinear):
                    proj.lora_B.copy_(0.2 * torch.randn(proj.lora_B.shape, generator=g))
    return model


def ours(base, method):
    model = copy.deepcopy(base)
    return nontrivial(B.wrap(model, method, "xprefix-torch"))


def rotate(x, position, model):
    """RoPE applied to x (H, P, D) as if every row sat at `position` (negative: the inverse)."""
    cos, sin = model.model.rotary_emb(x, torch.full((1, x.shape[1]), position, device=x.device))  # (1, P, D)
    return x * cos + rotate_half(x) * sin


def peft_from(ref, base, method):
    """PEFT's model of `method` on a copy of `base`, its parameters set from ours (`ref`) so both
    compute one function. Returns (PEFT model, the wrapped base copy)."""
    copied = copy.deepcopy(base)
    model = B.wrap(copied, method, "peft")
    n_tokens = B.N_PREFIX
    with torch.no_grad():
        if method == "soft_prompt":
            model.prompt_encoder["default"].embedding.weight.copy_(ref.model.soft_prompt.prompt)
        elif method == "prefix":
            # PEFT's prefix is keys and values in the cache, before the sequence: queries sit at P + i
            # and see unrotated keys; ours sit at i. RoPE is a rotation, <R(P+i) q, R(P) k> = <R(i) q, k>,
            # so PEFT's keys are ours rotated to position P; values are ours.
            table = model.prompt_encoder["default"].embedding.weight.view(  # (P, layers, k|v, Hkv, D)
                n_tokens, len(ref.model.layers), 2, -1, ref.config.head_dim)
            for i, layer in enumerate(ref.model.layers):
                pk, pv = layer.self_attn.prefix_adapter.keys_values(layer.self_attn)  # (Hkv, P, D)
                table[:, i, 0] = rotate(pk, n_tokens, ref).transpose(0, 1)
                table[:, i, 1] = pv.transpose(0, 1)
        elif method == "adapter":
            for ours_layer, layer in zip(ref.model.layers, copied.model.layers):
                state = getattr(ours_layer.self_attn, "prefix_adapter", None)
                assert (state is None) == (type(layer.self_attn).__name__ != "AdaptedAttention")
                if state is not None:
                    layer.self_attn.adaption_prompt.copy_(state.prefix[None])
                    assert torch.all(state.gate == state.gate[0])
                    layer.self_attn.adaption_gate.fill_(torch.tanh(state.gate[0]))  # PEFT applies its gate as is
        else:
            for ours_layer, layer in zip(ref.model.layers, copied.model.layers):
                for name in ("q_proj", "k_proj", "v_proj"):
                    a, b = getattr(ours_layer.self_attn, name), getattr(layer.self_attn, name)
                    assert b.scaling["default"] == a.scaling == B.LORA_ALPHA / B.LORA_RANK
                    b.lora_A["default"].weight.copy_(a.lora_A)
                    b.lora_B["default"].weight.copy_(a.lora_B)
    return model, copied


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", B.METHODS)
def test_training_loss_and_gradients_equal_across_implementations(method):
    """The benchmark's training step computes one loss through all three paths, and gradients that
    are one gradient: equal where the parameters are the same tensors (soft prompt, LoRA, the
    adapter's prompt), related by the chain rule where they are not (the adapter's gate: ours is one
    per head through tanh, PEFT's one per layer without it, so only equal-per-layer gates can be
    matched; prefix tuning: PEFT learns keys and values, ours the hidden vectors they are projected
    from, so ours is PEFT's pulled back through the frozen k_proj / v_proj)."""
    base = tiny_base()
    ids = torch.randint(0, base.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    ref = ours(base, method)
    peft_model, peft_base = peft_from(ref, base, method)
    losses, grads = {}, {}
    for name, model in [("torch", ref), ("triton", ref), ("peft", peft_model)]:
        if name == "triton":
            adapters.set_attn_backend(ref, "triton")
        model.train()
        model.zero_grad(set_to_none=True)
        loss = B.train_loss(model, ids)
        loss.backward()
        losses[name], grads[name] = loss.item(), grads_of(model)
    print(method, losses)
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-5)
    assert losses["peft"] == pytest.approx(losses["torch"], rel=1e-5)
    assert grads["triton"].keys() == grads["torch"].keys()
    for name, grad in grads["torch"].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads["triton"][name], grad, rtol=1e-3, atol=1e-5, msg=name)

    ours_grads = {p: grads["torch"][n] for n, p in ref.named_parameters() if p.requires_grad}
    layers = list(zip(ref.model.layers, peft_base.model.layers))
    if method == "soft_prompt":
        pairs = [(ref.model.soft_prompt.prompt, peft_model.prompt_encoder["default"].embedding.weight.grad)]
    elif method == "lora":
        pairs = [(getattr(a.self_attn, n).lora_A, getattr(b.self_attn, n).lora_A["default"].weight.grad)
                 for a, b in layers for n in ("q_proj", "k_proj", "v_proj")]
        pairs += [(getattr(a.self_attn, n).lora_B, getattr(b.self_attn, n).lora_B["default"].weight.grad)
                  for a, b in layers for n in ("q_proj", "k_proj", "v_proj")]
    elif method == "adapter":
        pairs = []
        for a, b in layers:
            state = getattr(a.self_attn, "prefix_adapter", None)
            if state is not None:
                # PEFT's gate is c = tanh(g): dL/dc = sum over heads of dL/dg_h / (1 - tanh(g)^2)
                gate_grad = ours_grads[state.gate].sum() / (1 - torch.tanh(state.gate[0]) ** 2)
                torch.testing.assert_close(b.self_attn.adaption_gate.grad[0], gate_grad, rtol=1e-4, atol=1e-6)
                pairs.append((state.prefix, b.self_attn.adaption_prompt.grad[0]))
    else:
        table = peft_model.prompt_encoder["default"].embedding.weight.grad.view(
            B.N_PREFIX, len(ref.model.layers), 2, -1, ref.config.head_dim)  # (P, layers, k|v, Hkv, D)
        pairs = []
        for i, layer in enumerate(ref.model.layers):
            attn = layer.self_attn
            grad_k = rotate(table[:, i, 0].transpose(0, 1), -B.N_PREFIX, ref).transpose(0, 1)  # (P, Hkv, D)
            pulled_back = grad_k.flatten(1) @ attn.k_proj.weight + table[:, i, 1].flatten(1) @ attn.v_proj.weight
            pairs.append((attn.prefix_adapter.prefix, pulled_back))  # (P, hidden)
    assert len(pairs) >= 1
    for param, peft_grad in pairs:
        torch.testing.assert_close(peft_grad, ours_grads[param], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", B.METHODS)
def test_scores_and_generated_tokens_equal_across_implementations(method):
    """The scoring and generation sections do equal work: the same option log-likelihoods and the
    same greedy tokens through all three paths (their prompts are unpadded: with left padding PEFT's
    prompt tuning puts the prompt before the padding and drops position_ids, ours does neither)."""
    base = tiny_base()
    ref = ours(base, method)
    peft_model, _ = peft_from(ref, base, method)
    sizes = dict(B.SMOKE, score_examples=2, score_prompt=12, gen_batch=2, gen_prompt=12, gen_new=4)
    rows = B.section_inputs("score", base, sizes, DEVICE)
    prompts = B.section_inputs("generate", base, sizes, DEVICE)
    out = {}
    for name, model in [("torch", ref), ("triton", ref), ("peft", peft_model)]:
        if name == "triton":
            adapters.set_attn_backend(ref, "triton")
        model.eval()
        scores = torch.cat([B.option_logprobs(model, r, sizes["score_option_len"]) for r in rows])
        out[name] = scores, B.generate_tokens(model, prompts, sizes["gen_new"])
    # the reference tokens: greedy decoding by whole forward passes of PEFT's model, no generate() and
    # no KV cache, so they hold whatever the transformers version (PEFT's own generate() decodes prompt
    # and prefix tuning wrongly from transformers 5.24 on; see B.check_cached_generation)
    reference = prompts
    with torch.no_grad():
        for _ in range(sizes["gen_new"]):
            logits = peft_model(input_ids=reference, attention_mask=torch.ones_like(reference)).logits
            reference = torch.cat([reference, logits[:, -1].argmax(-1, keepdim=True)], 1)
    reference = reference[:, -sizes["gen_new"]:]
    print(method, {k: v[0].tolist() for k, v in out.items()}, "reference", reference[0].tolist())
    for name in ("triton", "peft"):
        torch.testing.assert_close(out[name][0], out["torch"][0], rtol=1e-4, atol=1e-4, msg=name)
    for name in ("torch", "triton"):
        assert torch.equal(out[name][1], reference), (name, out[name][1], reference)
    assert out["torch"][1].shape == (2, 4)
    # the benchmark times PEFT's cached generation only where it decodes right
    if torch.equal(out["peft"][1], reference):
        B.check_cached_generation(peft_model, prompts, sizes["gen_new"])
    else:
        with pytest.raises(RuntimeError, match="cached generation is wrong"):
            B.check_cached_generation(peft_model, prompts, sizes["gen_new"])
    B.check_cached_generation(ref, prompts, sizes["gen_new"])  # ours never differs


# ---- activation checkpointing ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("method", B.METHODS)
def test_gradient_checkpointing_keeps_every_gradient(method, backend):
    """adapters.set_gradient_checkpointing: the same loss and gradients (prefix methods included,
    which PEFT refuses), each layer recomputed once in the backward, except the layers below a
    last-layers prefix, whose activations no gradient needs."""
    model = copy.deepcopy(tiny_base(n_layers=3))
    adapters.attach(model, method, n_prefix_tokens=4, n_adapted_layers=2, attn_backend=backend)
    nontrivial(model).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    calls = []
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_hook(lambda *_, i=i: calls.append(i))

    def run():
        calls.clear()
        model.zero_grad(set_to_none=True)
        loss = B.train_loss(model, ids)
        loss.backward()
        return loss.item(), grads_of(model), sorted(calls)

    loss, grads, plain_calls = run()
    adapters.set_gradient_checkpointing(model)
    ckpt_loss, ckpt_grads, ckpt_calls = run()
    assert plain_calls == [0, 1, 2]
    assert ckpt_calls == ([0, 1, 1, 2, 2] if method in adapters.PREFIX_METHODS else [0, 0, 1, 1, 2, 2])
    assert ckpt_loss == loss
    assert ckpt_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    adapters.set_gradient_checkpointing(model, False)
    assert run()[2] == [0, 1, 2]


@pytest.mark.parametrize("impl", ["xprefix-torch", "peft"])
@pytest.mark.parametrize("method", B.METHODS)
def test_unwrap_leaves_the_base_model_as_it_was(method, impl):
    """The benchmark runs every cell on one base model per shape: after a cell (checkpointed,
    trained, generated from) the base has its modules, hooks, flags and outputs back."""
    base = tiny_base()
    ids = torch.randint(0, base.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(5)).to(DEVICE)

    def hooks(module):  # transformers installs its own output-capturing hooks, once, on first use
        return [h.__name__ for h in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
                if h.__name__ != "output_capturing_hook"]

    def state():
        with torch.no_grad():
            logits = base(input_ids=ids).logits
        modules = [(n, type(m).__name__, hooks(m), getattr(m, "gradient_checkpointing", None))
                   for n, m in base.named_modules()]
        return modules, [(n, p.requires_grad) for n, p in base.named_parameters()], \
            base.config._attn_implementation, "prepare_inputs_for_generation" in base.__dict__, logits

    before = state()
    model = B.wrap(base, method, impl, grad_ckpt=method != "prefix" or impl != "peft")
    model.train()
    B.train_loss(model, ids).backward()
    model.eval()
    B.generate_tokens(model, ids, 2)
    B.unwrap(base, model, impl)
    after = state()
    assert after[:4] == before[:4]
    torch.testing.assert_close(after[4], before[4], rtol=0, atol=0)


# ---- the script --------------------------------------------------------------------------------------

def test_missing_peft_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(SystemExit, match="pip install"):
        B.import_peft()


def test_smoke_run_writes_the_table_and_quotes_failures(tmp_path):
    """One small run end to end: every cell measured or failed with its message, the floor, the
    ratios and targets, the versions and command; PEFT's prefix tuning refuses checkpointing."""
    out = tmp_path / "bench"
    B.main(["--smoke", "--methods", "prefix", "lora", "--impls", "xprefix-torch", "peft", "--seq", "32",
            "--steps", "1", "--grad-ckpt", "tiny:32", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    for key in ("torch", "triton", "transformers", "peft", "device", "date", "command"):
        assert result[key], key
    assert "--smoke" in result["command"] and f"peft {peft.__version__}" in md
    cells = {(r["section"], r["method"], r["impl"], r["grad_ckpt"]): r for r in result["rows"]}
    expected = {(s, m, i, c) for m, i in [("none", "none"), ("prefix", "xprefix-torch"), ("prefix", "peft"),
                                          ("lora", "xprefix-torch"), ("lora", "peft")]
                for s, c in [("train", False), ("score", False), ("generate", False), ("train", True)]}
    assert set(cells) == expected
    refused = cells[("train", "prefix", "peft", True)]
    assert refused["value"] is None and "does not work with gradient checkpointing" in refused["error"]
    assert f"`{refused['error']}`" in md
    # PEFT's prefix tuning decodes wrongly from transformers 5.24 on, which passes the cache as `cache=`
    # (PEFT reads `past_key_values`): the benchmark quotes that instead of timing it
    from transformers.models.llama.modeling_llama import LlamaModel
    wrong_cache = "cache" in inspect.signature(LlamaModel.forward).parameters
    generate = cells[("generate", "prefix", "peft", False)]
    if wrong_cache:
        assert generate["value"] is None and "cached generation is wrong" in generate["error"]
    for key, r in cells.items():
        if key != ("train", "prefix", "peft", True) and not (wrong_cache and r is generate):
            assert r["error"] is None and r["value"] > 0, (key, r["error"])
    targets = {t["target"] for t in result["targets"]}
    assert {"prefix train speed >= 1.3x PEFT", "prefix train time <= 1.15x floor",
            "lora train speed >= 0.95x PEFT (parity)", "prefix generation speed >= PEFT"} <= targets
    assert "### tiny: activation checkpointing, training at seq 32" in md and "| prefix | peft |" in md


def test_profile_writes_top_ops(tmp_path):
    B.main(["--smoke", "--profile", "tiny:prefix:xprefix-torch:train:32", "--out", str(tmp_path / "bench")])
    (path,) = tmp_path.glob("bench_profile_*.txt")
    assert "Self CPU" in path.read_text() and "aten::" in path.read_text()


@pytest.mark.slow
def test_train_py_with_gradient_checkpointing_trains_the_same_adapter(tmp_path, tiny_model_dir, shared_data,
                                                                      monkeypatch):
    """RunConfig.gradient_checkpointing reaches the model in train.py: two steps with and without
    it log the same losses and save the same prefix."""
    import train
    from safetensors.torch import load_file
    enabled = []
    original = adapters.set_gradient_checkpointing
    monkeypatch.setattr(adapters, "set_gradient_checkpointing",
                        lambda model, enabled_=True: enabled.append(enabled_) or original(model, enabled_))
    found = {}
    for flag in (False, True):
        run = dict(name="tiny", model=str(tiny_model_dir), method="prefix", task="xnli", data_dir=str(shared_data),
                   train_source="xnli_en_validation", train_samples=8, batch_size=4, epochs=1, lr=1e-2,
                   max_length=96, n_prefix_tokens=4, n_adapted_layers=2, attn_backend="torch",
                   gradient_checkpointing=flag, out_dir=str(tmp_path / f"runs_{flag}"))
        path = tmp_path / f"runs_{flag}.yaml"
        path.write_text(json.dumps({"runs": [run]}))  # JSON is YAML
        train.main(["--run", "tiny", "--runs-file", str(path)])
        run_dir = tmp_path / f"runs_{flag}" / "tiny"
        log = json.loads((run_dir / "train_log.json").read_text())
        assert log["config"]["gradient_checkpointing"] is flag
        found[flag] = [entry["loss"] for entry in log["log"]], load_file(run_dir / "adapter" / "adapter.safetensors")
    assert enabled == [True]  # once, for the run that asked
    assert len(found[True][0]) == 2 and found[True][0] == pytest.approx(found[False][0], rel=1e-6)
    assert found[True][1].keys() == found[False][1].keys()
    for name, tensor in found[False][1].items():
        torch.testing.assert_close(found[True][1][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
