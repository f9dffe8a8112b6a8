"""Sharing adapters: a model card and the Hugging Face hub, and PEFT's format.

    python share.py export-peft runs/NAME/adapter exports/NAME [--base-model org/id]

adapters.save_adapter writes the card (model_card) into every adapter folder and, given
push_to_hub, uploads the folder (push_adapter); adapters.load_adapter reads a hub repo id through
huggingface_hub's cache. LoRA and soft prompts convert to and from PEFT's format exactly
(export_peft, import_peft), so PEFT, vLLM and anything else that reads PEFT's LoRA files can use
them; prefix tuning and LLaMA-Adapter have no PEFT equivalent (NO_PEFT_EQUIVALENT says why).
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

import adapters


def model_card(path, repo_id=None) -> str:
    """The README.md of the adapter folder `path` (to be pushed to `repo_id`): YAML front matter the
    hub reads (library_name, base_model, tags), then what made the adapter: method, run config,
    training sources, versions, and the scores per language of results.json beside the folder where
    evaluate.py wrote one for these very weights (its adapter_sha256 is this folder's)."""
    path = Path(path)
    config = _read_config(path)
    run, method, base = config.get("run"), config.get("method"), config.get("base_model")
    task = (config.get("config") or {}).get("task")
    meta = dict(library_name="xprefix", tags=[t for t in ("xprefix", method, task, "cross-lingual") if t])
    if isinstance(base, str) and adapters.REPO_ID.fullmatch(base) and not Path(base).exists():  # a hub id, not a local path
        meta["base_model"] = base
    lines = ["---", yaml.safe_dump(meta, sort_keys=True).strip(), "---", "",
             f"# {run or path.name}: {method} adapter" + (f" for {base}" if base else ""), "",
             f"Trained with xprefix on English{' ' + task if task else ''} data and evaluated zero-shot in other "
             f"languages. Load it with `adapters.load_adapter(model, \"{repo_id or 'user/repo'}\")` on the base model "
             f"(xprefix's adapters.py); LoRA adapters also convert to PEFT's format with `share.export_peft`.", ""]
    if config.get("train_sources"):
        lines += ["## Training data", "", "| source | examples |", "|---|---|"]
        lines += [f"| {source} | {n:,} |" for source, n in config["train_sources"].items()] + [""]
    results = _results_for(path)
    if results:
        rows, langs, metric = results["rows"], results["languages"], results["metric"]
        lines += [f"## Scores ({results['task']} {metric}, from evaluate.py)", "",
                  "| | " + " | ".join(langs) + " | avg |", "|" + "---|" * (len(langs) + 2)]
        for row, per_lang in rows.items():
            values = [per_lang[lang][metric] for lang in langs]
            values.append(sum(values) / len(values))
            lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        lines.append("")
    else:
        lines += ["## Scores", "", "Not evaluated yet (no results.json for these weights beside the adapter).", ""]
    settings = {f.name: config.get(f.name) for f in dataclasses.fields(adapters.AdapterConfig)}
    lines += ["## Config", "", "```json", json.dumps(config.get("config") or settings, indent=2), "```", ""]
    if config.get("versions"):
        lines += ["## Versions", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in config["versions"].items()] + [""]
    return "\n".join(lines)


def _results_for(path):
    """results.json beside the adapter folder, if it scored these weights; else None."""
    try:
        results = json.loads((path.parent / "results.json").read_text())
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256()
    with open(path / "adapter.safetensors", "rb") as f:  # in chunks: method full's file is the whole model
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return results if results.get("adapter_sha256") == digest.hexdigest() else None


def push_adapter(path, repo_id, token=None, private=None):
    """Upload the adapter folder `path` (tensors, config and a freshly written model card) to the
    hub model repo `repo_id`, created if missing. Returns huggingface_hub's CommitInfo."""
    path = Path(path)
    if not (isinstance(repo_id, str) and adapters.REPO_ID.fullmatch(repo_id)):
        raise ValueError(f"push_to_hub {repo_id!r} is not a hub repo id (user/repo)")
    if not (path / "adapter.safetensors").is_file():
        raise ValueError(f"{path} holds no adapter to push (expected adapter_config.json and adapter.safetensors)")
    config = _read_config(path)
    adapters._write_atomic(path / "README.md", model_card(path, repo_id))
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(path),
                                 allow_patterns=["adapter.safetensors", "adapter_config.json", "README.md"],
                                 commit_message=f"xprefix {config.get('method')} adapter {config.get('run', '')}")
    except (OSError, ValueError) as e:  # not logged in (hf auth login, HF_TOKEN), offline, no write access
        raise ValueError(f"could not push {path} to the hub repo {repo_id} ({type(e).__name__}: {e})") from None


# ---- PEFT's format: LoRA and soft prompts convert exactly; prefix methods do not ---------------------

PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM around the HF model: our names follow it
NO_PEFT_EQUIVALENT = {
    "prefix": "PEFT's prefix tuning learns each layer's keys and values themselves, placed in the KV cache as if "
              "already projected and rotated (the sequence's positions then start at P), at every layer; ours learns "
              "hidden-space vectors that the frozen k_proj / v_proj project, without rotary, the sequence's positions "
              "starting at 0, at the last n_adapted_layers layers",
    "adapter": "PEFT's AdaptionPrompt (LLaMA-Adapter) scales a layer's adapter attention by one gate per layer, "
               "used as is; ours by tanh of one gate per head",
    "full": "method 'full' trains every weight; save the whole model with model.save_pretrained instead",
    "base": "method 'base' has no adapter",
}


def _read_config(path):
    """adapter_config.json of `path` as save_adapter wrote it; a ValueError naming the folder otherwise."""
    try:
        return json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:  # missing, or not JSON (JSONDecodeError is a ValueError)
        raise ValueError(f"{path} holds no readable adapter_config.json ({type(e).__name__}: {e})") from None


def export_peft(model_or_folder, out_dir, base_model=None):
    """Write a LoRA or soft-prompt adapter in PEFT's format, out_dir/adapter_config.json and
    out_dir/adapter_model.safetensors, as `PeftModel.from_pretrained(base, out_dir)` reads them and
    vLLM serves LoRA. Both compute our function: our LoRA scales by alpha / r as PEFT's default (not
    rslora), and our soft prompt is PEFT's prompt tuning, which puts the prompt before any left
    padding (ours goes after it), so the two agree on unpadded and right-padded input.

    Args:
        model_or_folder: a model with the adapter attached, or a folder save_adapter wrote.
        out_dir: a folder of its own (PEFT's config file has our config file's name).
        base_model: hub id or path recorded as base_model_name_or_path; default: the adapter's record.
    Prefix tuning and LLaMA-Adapter are a ValueError naming how PEFT's versions differ from ours.
    """
    if isinstance(model_or_folder, (str, Path)):
        folder = Path(model_or_folder)
        config = _read_config(folder)
        if "model" not in config or "method" not in config:
            raise ValueError(f"{folder} holds no xprefix adapter (its adapter_config.json is not save_adapter's)")
        tensors = adapters._read_tensors(folder)
    else:
        model = model_or_folder
        if any(m.merged for m in model.modules() if isinstance(m, adapters.LoRALinear)):
            raise ValueError("the LoRA update is merged into the base weights: export before merge()")
        config = dict(dataclasses.asdict(model.xprefix_config), model=adapters._shape_signature(model),
                      base_model=getattr(model.config, "_name_or_path", None) or None)
        tensors = {k: v.detach().contiguous().cpu() for k, v in adapters.trainable_state_dict(model).items()}
    method = config["method"]
    if method not in ("lora", "soft_prompt"):
        raise ValueError(f"a {method!r} adapter has no PEFT equivalent: {NO_PEFT_EQUIVALENT[method]}")
    shape = config["model"]
    common = dict(task_type="CAUSAL_LM", base_model_name_or_path=base_model or config.get("base_model"),
                  inference_mode=True, revision=None)
    if method == "lora":
        alpha = config["lora_alpha"]
        alpha = int(alpha) if alpha == int(alpha) else alpha
        # every field PEFT and vLLM read, at the values that mean plain LoRA
        peft_config = dict(peft_type="LORA", r=config["lora_rank"], lora_alpha=alpha,
                           target_modules=list(adapters.LORA_TARGETS), lora_dropout=0.0, bias="none", fan_in_fan_out=False,
                           use_rslora=False, use_dora=False, init_lora_weights=True, modules_to_save=None,
                           layers_to_transform=None, layers_pattern=None, rank_pattern={}, alpha_pattern={}, **common)
        peft_tensors = {f"{PEFT_PREFIX}{name}.weight": t for name, t in tensors.items()}  # ....q_proj.lora_A.weight
    else:
        peft_config = dict(peft_type="PROMPT_TUNING", num_virtual_tokens=config["n_prefix_tokens"],
                           token_dim=shape["hidden_size"], num_transformer_submodules=1,
                           num_attention_heads=shape["num_attention_heads"], num_layers=shape["num_hidden_layers"],
                           prompt_tuning_init="RANDOM", **common)
        (prompt,) = tensors.values()  # (P, hidden)
        peft_tensors = {"prompt_embeddings": prompt}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapters._write_atomic(out_dir / "adapter_model.safetensors", tensors=peft_tensors)
    adapters._write_atomic(out_dir / "adapter_config.json", json.dumps(peft_config, indent=2))
    return out_dir


def import_peft(model, path, attn_backend="auto"):
    """Attach the PEFT adapter at `path` (a folder PeftModel.save_pretrained wrote, or a hub repo id)
    to `model` as ours: LoRA on q_proj, k_proj, v_proj of every layer, or prompt tuning as a soft
    prompt. What ours would compute differently is a ValueError naming it."""
    path = adapters._local_or_hub(path)
    config = _read_config(path)
    if "peft_type" not in config:
        raise ValueError(f"{path} holds no PEFT adapter (adapter_config.json has no peft_type)"
                         + ("; it is an xprefix adapter: use load_adapter" if "method" in config else ""))
    tensors = adapters._read_tensors(path, "adapter_model.safetensors")
    kind = config["peft_type"]
    if kind == "LORA":
        plain = dict(use_dora=False, use_rslora=False, bias="none", fan_in_fan_out=False)
        other = {k: config[k] for k, v in plain.items() if config.get(k, v) != v}
        other.update({k: config[k] for k in ("modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern",
                                             "target_parameters", "layer_replication", "trainable_token_indices")
                      if config.get(k)})
        if other:
            raise ValueError(f"PEFT adapter {path} uses LoRA options that xprefix's plain LoRA (scaling alpha / r) "
                             f"does not compute: {other}")
        ours = {k[len(PEFT_PREFIX):-len(".weight")]: t for k, t in tensors.items()
                if k.startswith(PEFT_PREFIX) and k.endswith(".weight")}
        targets = {name.split(".")[-2] for name in ours}
        if len(ours) != len(tensors) or targets != set(adapters.LORA_TARGETS):
            raise ValueError(f"PEFT adapter {path} adapts {sorted(targets)} (tensors {sorted(tensors)[:3]}, ...); "
                             f"xprefix's LoRA adapts exactly {', '.join(adapters.LORA_TARGETS)} of every layer")
        # PEFT's own defaults where a config leaves them out
        adapters.attach(model, "lora", lora_rank=config.get("r", 8), lora_alpha=config.get("lora_alpha", 8),
                        attn_backend=attn_backend)
        return adapters._copy_tensors(model, ours, path)
    if kind == "PROMPT_TUNING":
        prompt = tensors.get("prompt_embeddings")
        if set(tensors) != {"prompt_embeddings"} or config.get("num_transformer_submodules", 1) != 1 \
                or prompt.shape[-1] != model.config.hidden_size:
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise ValueError(f"PEFT prompt tuning adapter {path} is not one prompt of the model's hidden size "
                             f"{model.config.hidden_size}: tensors {shapes}, "
                             f"num_transformer_submodules {config.get('num_transformer_submodules')}")
        adapters.attach(model, "soft_prompt", n_prefix_tokens=prompt.shape[0], attn_backend=attn_backend)
        (name,) = adapters.trainable_state_dict(model)
        return adapters._copy_tensors(model, {name: prompt}, path)
    raise ValueError(f"PEFT adapter {path} is {kind}; xprefix imports LORA and PROMPT_TUNING only (PEFT's "
                     f"PREFIX_TUNING and ADAPTION_PROMPT compute other functions than our prefix and adapter)")


def main(argv=None):
    """python share.py export-peft ADAPTER_DIR OUT_DIR [--base-model HUB_ID]"""
    import argparse
    import sys
    parser = argparse.ArgumentParser(description="Convert an xprefix LoRA or soft-prompt adapter to PEFT's format")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export-peft", help="write ADAPTER_DIR's adapter as PEFT's files in OUT_DIR")
    export.add_argument("adapter_dir")
    export.add_argument("out_dir")
    export.add_argument("--base-model", default=None, help="hub id recorded as base_model_name_or_path")
    args = parser.parse_args(argv)
    try:
        out = export_peft(args.adapter_dir, args.out_dir, base_model=args.base_model)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out / 'adapter_config.json'} and {out / 'adapter_model.safetensors'}")


if __name__ == "__main__":
    main()
