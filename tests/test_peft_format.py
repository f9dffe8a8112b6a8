"""share.export_peft / import_peft: our LoRA and soft prompt in PEFT's files, read by PEFT's own
PeftModel.from_pretrained, give our logits; PEFT's files read by us give PEFT's logits; what has no
PEFT equivalent (prefix tuning, LLaMA-Adapter) or that ours would compute otherwise is a clear error.

PEFT is a test dependency (requirements-dev.txt).
"""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapters
import share
from test_adapters import attached, batch, tiny

try:
    import peft
except ImportError as e:  # a clear failure, not a skip, as in test_bench_peft.py
    raise ImportError("tests/test_peft_format.py needs PEFT: pip install -r requirements-dev.txt") from e


def trained(model, seed=0):
    """Every trainable tensor moved off its initial value, so all of them change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def peft_lora(base, **kw):
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                             target_modules=["q_proj", "k_proj", "v_proj"], **kw)
    return trained(peft.get_peft_model(copy.deepcopy(base), config)).eval()


@pytest.mark.parametrize("source", ["model", "folder"])
def test_lora_export_loads_in_peft_with_our_logits(tmp_path, source):
    base = tiny()
    ours = trained(attached(base, "lora"))
    if source == "folder":
        adapters.save_adapter(ours, tmp_path / "ours", extra=dict(base_model="meta-llama/Llama-3.1-8B"))
    share.export_peft(ours if source == "model" else tmp_path / "ours", tmp_path / "peft")

    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == ("LORA", "CAUSAL_LM", 4, 8)
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    # what vLLM's LoRA loader refuses otherwise
    assert (config["bias"], config["use_dora"], config["use_rslora"], config["modules_to_save"]) == ("none", False,
                                                                                                   False, None)
    if source == "folder":
        assert config["base_model_name_or_path"] == "meta-llama/Llama-3.1-8B"
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert len(tensors) == 3 * 2 * 3  # layers x (A, B) x (q, k, v)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 48)

    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    ids, mask = batch()
    with torch.no_grad():
        want, got = ours(ids, attention_mask=mask).logits, loaded(input_ids=ids, attention_mask=mask).logits
        plain = base(ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (want - plain)[valid].abs().max() > 1e-2  # the adapter changes the logits
    torch.testing.assert_close(got[valid], want[valid])


def test_peft_lora_imports_with_peft_logits(tmp_path):
    base = tiny()
    theirs = peft_lora(base)
    theirs.save_pretrained(tmp_path / "peft")
    ours = share.import_peft(copy.deepcopy(base), tmp_path / "peft", attn_backend="torch").eval()
    assert ours.xprefix_config.method == "lora" and ours.xprefix_config.lora_rank == 4
    ids, mask = batch()
    with torch.no_grad():
        want, got = theirs(input_ids=ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()])
    # and back: the same tensors under the same names
    share.export_peft(ours, tmp_path / "again")
    again, saved = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("again", "peft"))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


def test_soft_prompt_round_trips_through_peft_prompt_tuning(tmp_path):
    """Our soft prompt is PEFT's prompt tuning: the same logits on unpadded input (PEFT returns the
    prompt's positions too; ours drops them), both ways."""
    base = tiny()
    ours = trained(attached(base, "soft_prompt"))  # 5 prompt vectors
    share.export_peft(ours, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"], config["token_dim"]) == ("PROMPT_TUNING", 5, 48)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    ids = batch()[0]
    with torch.no_grad():
        want = ours(ids).logits
        got = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 5:]
        plain = base(ids).logits
    assert (want - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, want)

    theirs.save_pretrained(tmp_path / "saved_by_peft")
    back = share.import_peft(copy.deepcopy(base), tmp_path / "saved_by_peft", attn_backend="torch").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, want)


MISMATCH = {"prefix": "no PEFT equivalent: PEFT's prefix tuning learns each layer's keys and values themselves",
            "adapter": "no PEFT equivalent: PEFT's AdaptionPrompt .* one gate per layer, used as is; ours by tanh of "
                       "one gate per head"}


@pytest.mark.parametrize("method", MISMATCH)
def test_prefix_methods_have_no_peft_export(tmp_path, method):
    message = MISMATCH[method]
    model = attached(tiny(), method)
    with pytest.raises(ValueError, match=message):
        share.export_peft(model, tmp_path / "peft")
    adapters.save_adapter(model, tmp_path / "ours")
    with pytest.raises(ValueError, match=message):
        share.export_peft(tmp_path / "ours", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_what_ours_cannot_compute_is_a_clear_import_error(tmp_path):
    base = tiny()
    # LoRA on other modules than q, k, v
    peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=[
        "q_proj", "o_proj"])).save_pretrained(tmp_path / "o_proj")
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"adapts \['o_proj', 'q_proj'\].*exactly q_proj, k_proj, v_proj"):
        share.import_peft(model, tmp_path / "o_proj")
    assert not getattr(model, "xprefix_config", None)  # refused before anything was attached
    # another scaling (rank-stabilised LoRA)
    peft_lora(base, use_rslora=True).save_pretrained(tmp_path / "rslora")
    with pytest.raises(ValueError, match=r"LoRA options .*\{'use_rslora': True\}"):
        share.import_peft(copy.deepcopy(base), tmp_path / "rslora")
    # PEFT's prefix tuning
    peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
                        ).save_pretrained(tmp_path / "prefix")
    with pytest.raises(ValueError, match="is PREFIX_TUNING; xprefix imports LORA and PROMPT_TUNING only"):
        share.import_peft(copy.deepcopy(base), tmp_path / "prefix")
    # each loader pointed at the other's format
    adapters.save_adapter(attached(base, "lora"), tmp_path / "ours")
    with pytest.raises(ValueError, match="no PEFT adapter .*it is an xprefix adapter: use load_adapter"):
        share.import_peft(copy.deepcopy(base), tmp_path / "ours")
    with pytest.raises(ValueError, match="holds a PEFT adapter .*import_peft"):
        adapters.load_adapter(copy.deepcopy(base), tmp_path / "o_proj")
    # a torn file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "o_proj" / "adapter_model.safetensors"))
    (tmp_path / "o_proj" / "adapter_model.safetensors").write_bytes(b"torn")
    with pytest.raises(ValueError, match="adapter_model.safetensors is unreadable"):
        share.import_peft(copy.deepcopy(base), tmp_path / "o_proj")


def test_export_cli(tmp_path, capsys):
    adapters.save_adapter(trained(attached(tiny(), "lora")), tmp_path / "ours")
    share.main(["export-peft", str(tmp_path / "ours"), str(tmp_path / "peft"), "--base-model", "org/base"])
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"
    assert "adapter_model.safetensors" in capsys.readouterr().out
    adapters.save_adapter(attached(tiny(), "prefix"), tmp_path / "prefix")
    with pytest.raises(SystemExit, match="error: a 'prefix' adapter has no PEFT equivalent"):
        share.main(["export-peft", str(tmp_path / "prefix"), str(tmp_path / "out")])
