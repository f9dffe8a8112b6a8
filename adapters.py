"""The adaptation methods of the paper, attachable to any Hugging Face Llama, Mistral or Gemma 3 model.

    model = AutoModelForCausalLM.from_pretrained(...)
    adapters.attach(model, "prefix", n_prefix_tokens=10, n_adapted_layers=30)
    # or whole: adapters.attach(model, AdapterConfig("prefix", n_prefix_tokens=10)); a run's is cfg.adapter_config
    ... train ...
    adapters.save_adapter(model, "out/adapter")

Methods (base weights always frozen, except "full"):
- soft_prompt: n learnable input embeddings prepended to the input (Lester et al., 2021).
- prefix: n learnable vectors in hidden space at each of the last L layers, turned into keys and
  values by that layer's frozen k_proj / v_proj (no rotary embedding on the prefix), joined to the
  sequence's keys and values under one softmax (Li & Liang, 2021, in the paper's hidden-space form).
- adapter: LLaMA-Adapter (Zhang et al., 2023): the same prefix, but with its own softmax, scaled by
  tanh(g) with g a zero-initialised gate per head and layer and added to the ordinary causal
  attention. We use the tanh form of the original code on purpose (litgpt drops the tanh): the
  gate then saturates at +-1 instead of growing without bound.
- lora: low-rank updates of rank r on q_proj, k_proj, v_proj of every layer, B zero-initialised.
- full: every weight trainable.

Prefix methods do not touch the model's forward: their state is a submodule on each attention
module (`self_attn.prefix_adapter`), read by an attention function registered with transformers'
attention interface under the name "xprefix". That function runs plain PyTorch math, or, with
`attn_backend="triton"`, our fused kernel (kernels/). Soft prompts use forward hooks on the
decoder stack, so generation with a KV cache works unchanged.
"""
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

METHODS = ("base", "soft_prompt", "prefix", "adapter", "lora", "full")
PREFIX_METHODS = ("prefix", "adapter")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter is, apart from its weights: attach takes it whole, the model keeps it as
    `model.xprefix_config` (n_adapted_layers resolved), and save_adapter writes it verbatim as the first
    keys of adapter_config.json (as litgpt's Config and PEFT's per-method configs). A run's is
    config.RunConfig.adapter_config: the run's fields of these names.

    A field added later needs metadata={"optional": True} (with its default): older adapter folders
    lack it, and read_adapter_config requires every other field.
    """
    method: str                          # METHODS
    n_prefix_tokens: int = 10            # prefix / soft prompt length (paper: 10)
    n_adapted_layers: int | None = None  # prefix methods adapt the last L layers; None: min(30, all) (paper: 30 of 32)
    lora_rank: int = 4                   # LoRA's r
    lora_alpha: float = 8.0              # LoRA's alpha: the update is scaled by alpha / r

    @classmethod
    def required_keys(cls):
        return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("optional")}

    @classmethod
    def from_saved(cls, saved: dict):
        """The AdapterConfig of adapter_config.json's mapping (which read_adapter_config has checked)."""
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


class PrefixState(nn.Module):
    """The learned prefix of one attention layer (and, for LLaMA-Adapter, its gate)."""

    def __init__(self, init: torch.Tensor, n_heads: int, gated: bool):
        super().__init__()
        self.prefix = nn.Parameter(init.detach().clone().float())  # (P, hidden)
        self.gate = nn.Parameter(torch.zeros(n_heads)) if gated else None  # (Hq,)

    def keys_values(self, attn):
        """Prefix keys and values through the layer's frozen projections: (Hkv, P, D) each. A layer
        that normalises its keys per head (Gemma 3's k_norm, before rotary) normalises these too."""
        weight = attn.k_proj.weight
        prefix = self.prefix.to(weight.dtype)
        n_tokens, head_dim = prefix.shape[0], attn.head_dim
        pk = attn.k_proj(prefix).view(n_tokens, -1, head_dim)  # (P, Hkv, D)
        if getattr(attn, "k_norm", None) is not None:
            pk = attn.k_norm(pk)
        pv = attn.v_proj(prefix).view(n_tokens, -1, head_dim)  # (P, Hkv, D)
        return pk.transpose(0, 1), pv.transpose(0, 1)  # (Hkv, P, D) each


def _causal_mask(m, n, device, window=None):
    # query i (of the last m) sees key j <= i + n - m: right-aligned, so a KV-cache step works;
    # a sliding window also needs i + n - m - j < window
    mask = torch.ones(m, n, dtype=torch.bool, device=device).tril(diagonal=n - m)
    return mask if window is None else mask.triu(diagonal=n - m - window + 1)


def torch_prefix_attention(query, key, value, prefix_k, prefix_v, gate, attention_mask, scaling, dropout=0.0,
                           sliding_window=None):
    """Plain PyTorch prefix attention on HF layouts: query (B, Hq, M, D), key/value (B, Hkv, N, D),
    prefix (Hkv, P, D), attention_mask a bool (B, 1, M, N), or None for causal (within
    `sliding_window` keys, if given; a given mask already holds the window). Prefix keys are never
    masked. Returns (B, Hq, M, D)."""
    batch, n_heads, m, _ = query.shape
    groups = n_heads // key.shape[1]
    n = key.shape[2]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # (B, Hq, N, D)
    seq_mask = attention_mask if attention_mask is not None else _causal_mask(m, n, query.device, sliding_window)
    pk = repeat_kv(prefix_k[None].to(query.dtype), groups).expand(batch, -1, -1, -1)  # (B, Hq, P, D)
    pv = repeat_kv(prefix_v[None].to(query.dtype), groups).expand(batch, -1, -1, -1)
    if gate is None:  # one softmax over prefix and sequence; every query sees every prefix key
        seq_mask = seq_mask.expand(batch, 1, m, n)
        mask = torch.cat([seq_mask.new_ones(batch, 1, m, pk.shape[2]), seq_mask], dim=-1)
        return F.scaled_dot_product_attention(query, torch.cat([pk, key], 2), torch.cat([pv, value], 2),
                                              attn_mask=mask, dropout_p=dropout, scale=scaling)
    # a left-padded query row may see no sequence key at all: it gets zeros there, not NaN
    empty = ~seq_mask.any(-1, keepdim=True)  # (B, 1, M, 1)
    seq = F.scaled_dot_product_attention(query, key, value, attn_mask=seq_mask | empty, dropout_p=dropout,
                                         scale=scaling).masked_fill(empty, 0.0)
    pre = F.scaled_dot_product_attention(query, pk, pv, dropout_p=dropout, scale=scaling)
    return seq + torch.tanh(gate.float()).to(query.dtype).view(1, -1, 1, 1) * pre


def _key_start(attention_mask, window=None):
    """Per-sequence index of the first valid key, for the fused kernel, which represents exactly one
    kind of mask: causal, bottom-right aligned, keys before a per-row start masked (left padding),
    and optionally a sliding window. Any other mask (packed sequences' block diagonal, a 2D mask with
    holes, a custom 4D mask, a static cache's unused slots) is a ValueError, never a silent wrong answer.

    Only query rows that see their own key are compared: the others are padding (left or right),
    whose outputs nothing reads, and transformers may unmask such rows wholly to avoid NaN.
    The check runs once per mask tensor: the layers of one forward share it.
    """
    if attention_mask is None:
        return None
    cached = getattr(attention_mask, "_xprefix_key_start", None)
    if cached is not None:
        return cached
    allowed = _as_allowed(attention_mask)[:, 0]  # (B, M, N)
    batch, m, n = allowed.shape
    diagonal = torch.arange(m, device=allowed.device) + n - m  # each query's own key
    real = allowed.gather(2, diagonal.view(1, m, 1).expand(batch, m, 1))[..., 0]  # (B, M)
    # the first key any real query sees (not the last query's: under a window it sees only the window)
    seen = (allowed & real[..., None]).any(1)  # (B, N)
    key_start = seen.int().argmax(-1)  # (B,)
    want = _causal_mask(m, n, allowed.device, window)[None] & (
        torch.arange(n, device=allowed.device)[None, None] >= key_start[:, None, None])  # (B, M, N)
    wrong = (want != allowed) & real[..., None]
    if wrong.any():
        b, i, j = (int(x) for x in wrong.nonzero()[0])
        raise ValueError(
            f"attn_backend 'triton' represents causal masks with left padding (one first key per row)"
            f"{' and a ' + str(window) + '-key window' if window else ''}; this attention_mask is another "
            f"kind (packed sequences, a 2D mask with holes, a custom 4D mask or a static cache): batch row "
            f"{b}, query {i} {'sees' if allowed[b, i, j] else 'does not see'} key {j}. Use attn_backend "
            f"'torch', which applies any boolean mask exactly")
    attention_mask._xprefix_key_start = key_start
    return key_start


def _as_allowed(attention_mask):
    """A 4D mask as booleans: True where a key is visible. Float masks are additive: 0 visible, -inf
    (or the dtype's minimum) hidden; any other value is a bias no path here applies."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_floating_point():
        hidden = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
        if not ((attention_mask == 0) | hidden).all():
            raise ValueError("attention_mask holds additive biases other than 0 and -inf; xprefix attention "
                             "applies only visible/hidden masks")
        return ~hidden
    raise ValueError(f"attention_mask of dtype {attention_mask.dtype}: expected a bool mask (True = visible) "
                     f"or an additive float mask (0 / -inf)")


def xprefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                      **kwargs):
    """The attention function registered with transformers as "xprefix".

    Sliding-window layers (Gemma 3's local layers) pass `sliding_window`: the torch path reads the
    window from the mask transformers built for the layer, the kernel applies it itself. Prefix keys
    carry no position, so every query sees them in either kind of layer.
    """
    if kwargs.get("softcap") is not None:  # Gemma 2 caps attention logits; neither path does
        raise ValueError("xprefix attention does not implement attention-logit soft-capping (softcap)")
    if not getattr(module, "is_causal", True):
        raise ValueError("xprefix attention supports causal decoders only; this layer attends bidirectionally")
    state = getattr(module, "prefix_adapter", None)
    backend = getattr(module, "xprefix_backend", "torch")
    if backend == "triton":
        from kernels import prefix_attention
        pk, pv = state.keys_values(module) if state is not None else (None, None)
        gate = state.gate if state is not None else None
        out = prefix_attention(query, key, value, pk, pv, gate, causal=True, scale=scaling,
                               key_start=_key_start(attention_mask, sliding_window), window=sliding_window)
        return out.transpose(1, 2).contiguous(), None  # (B, M, Hq, D)
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    pk, pv = state.keys_values(module)
    out = torch_prefix_attention(query, key, value, pk, pv, state.gate, attention_mask, scaling, dropout,
                                 sliding_window)
    return out.transpose(1, 2).contiguous(), None  # (B, M, Hq, D)


AttentionInterface.register("xprefix", xprefix_attention)
AttentionMaskInterface.register("xprefix", sdpa_mask)  # bool (B, 1, M, N), or None when plain causal


class SoftPrompt(nn.Module):
    """n learnable input embeddings, inserted by hooks on the decoder stack (`model.model`).

    The prompt goes right before each row's first real token: in front for unpadded or right-padded
    rows, after the padding for left-padded ones, so a batch stays left-padded (what the fused
    kernel's per-row key start expects) and positions run on from the prompt into the text. The
    forward pre-hook inserts it at the first (prefill) call and widens masks and positions on
    cached decoding steps; the forward hook drops the prompt's positions from the output, so
    logits line up with the caller's input_ids and labels as if nothing were there.
    """

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(init.detach().clone().float())  # (P, hidden)

    def _layout(self, mask, batch, length, device):
        """Per-row first real token, and for each of the length + P new columns: is it a prompt
        column, and which old column (or prompt row) does it come from."""
        n = self.prompt.shape[0]
        first = mask.long().argmax(-1)[:, None] if mask is not None else torch.zeros(batch, 1, dtype=torch.long,
                                                                                      device=device)
        col = torch.arange(length + n, device=device)[None]  # (1, T + P)
        in_prompt = (col >= first) & (col < first + n)  # (B, T + P)
        source = torch.where(col < first, col, col - n).clamp(0, max(length - 1, 0))
        return first, in_prompt, source

    def _widen_mask(self, mask, in_prompt, source):
        return torch.where(in_prompt, torch.ones_like(source), mask.gather(1, source)).to(mask.dtype)

    def pre_hook(self, decoder, args, kwargs):
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        # the KV cache is whichever keyword holds a Cache: `past_key_values` up to transformers 5.23,
        # `cache` from 5.24 on. Found by type, not by name, so a renamed keyword cannot make every
        # decoding step look like a first call (which would insert the prompt again before each token)
        cache = next((v for v in kwargs.values() if isinstance(v, Cache)), None)
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        n = self.prompt.shape[0]
        if cache is not None and cache.get_seq_length() > 0:  # decoding: the prompt is in the cache
            kwargs["input_ids"] = input_ids
            if mask is not None:
                _, in_prompt, source = self._layout(mask, mask.shape[0], mask.shape[1], mask.device)
                kwargs["attention_mask"] = self._widen_mask(mask, in_prompt, source)
            if positions is not None:
                kwargs["position_ids"] = positions + n
            if kwargs.get("cache_position") is not None:
                kwargs["cache_position"] = kwargs["cache_position"] + n
            self._keep = None
            return (), kwargs
        if embeds is None:
            embeds = decoder.embed_tokens(input_ids)
        batch, length, hidden = embeds.shape
        first, in_prompt, source = self._layout(mask, batch, length, embeds.device)
        prompt_rows = self.prompt.to(embeds.dtype)[(torch.arange(length + n, device=embeds.device)[None] - first)
                                                    .clamp(0, n - 1)]  # (B, T + P, hidden)
        text = embeds.gather(1, source[..., None].expand(-1, -1, hidden))  # (B, T + P, hidden)
        kwargs["inputs_embeds"] = torch.where(in_prompt[..., None], prompt_rows, text)
        if mask is not None:
            mask = self._widen_mask(mask, in_prompt, source)
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        elif positions is not None:
            kwargs["position_ids"] = torch.cat([torch.arange(n, device=embeds.device).expand(positions.shape[0], n),
                                                positions + n], -1)
        if kwargs.get("cache_position") is not None:
            kwargs["cache_position"] = torch.arange(length + n, device=embeds.device)
        col = torch.arange(length, device=embeds.device)[None]
        self._keep = torch.where(col < first, col, col + n)  # (B, T): the text's columns in the output
        return (), kwargs

    def hook(self, decoder, args, kwargs, output):
        keep = getattr(self, "_keep", None)
        if keep is not None:
            h = output.last_hidden_state
            output.last_hidden_state = h.gather(1, keep[..., None].expand(-1, -1, h.shape[-1]))
        self._keep = None
        return output


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * x A^T B^T, B zero-initialised so the model starts unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear, and as PEFT
        self.merged = False

    @property
    def weight(self):  # so code that reads q_proj.weight (dtype, device) keeps working
        return self.base.weight

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + (x.to(self.lora_A.dtype) @ self.lora_A.t() @ self.lora_B.t() * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self):
        """Fold the update into the base weight; idempotent."""
        if not self.merged:
            self.base.weight += (self.lora_B @ self.lora_A * self.scaling).to(self.base.weight.dtype)
            self.merged = True


def _decoder(model):
    return model.model


def _prefix_inits(model, n_tokens, generator):
    """Initial prefix vectors for every layer: the normalised layer inputs of n random tokens,
    each run alone at position 0.

    Prefix keys carry no rotary embedding, which is what a key at position 0 looks like, and in a
    pretrained model position 0 is the attention sink. Starting from real position-0 states, the
    prefix joins the sink instead of drawing attention away from it: the adapted model starts
    close to the base model (random vectors in hidden space raised SmolLM2's answer loss from 2.5
    to 17.8 at step 0). Different tokens keep the n vectors distinct, so they train apart.
    """
    embed = _decoder(model).embed_tokens.weight
    layers = _decoder(model).layers
    if embed.device.type == "meta":
        return [torch.empty(n_tokens, embed.shape[1], device="meta") for _ in layers]
    ids = torch.randint(0, embed.shape[0], (n_tokens, 1), generator=generator).to(embed.device)
    with torch.no_grad():
        hidden = _decoder(model)(input_ids=ids, output_hidden_states=True).hidden_states  # inputs of each layer
        return [layer.input_layernorm(h[:, 0]).float() for layer, h in zip(layers, hidden)]


def _contiguous_input(module, args):
    return (args[0].contiguous(),) + args[1:]


def _contiguous_head_input(model):
    """Make the output head's input contiguous. Generation feeds the head the last position only,
    hidden[:, -1:, :], a strided view; once the head's weight is frozen, torch's matmul (2.13, CPU)
    no longer folds such a 3D input into one matrix product but multiplies each row against its own
    copy of the weight: 2.7 GB copied per prefill at batch 8 for Gemma 3's 262k-token head, ~20 s on
    a CPU core, 3.4x the base model's whole evaluation time. A contiguous input folds (0.06 s)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "xprefix_contiguous", None) is None:
        head.xprefix_contiguous = head.register_forward_pre_hook(_contiguous_input)  # its handle, to undo


def attach(model, method, *, attn_backend="auto", seed=0, **settings):
    """Attach an adapter to a Hugging Face LlamaForCausalLM / MistralForCausalLM / Gemma3ForCausalLM in place.

    Args:
        method: an AdapterConfig; or one of METHODS, with AdapterConfig's other fields as keywords
            (`attach(model, "lora", lora_rank=8)`).
        attn_backend: "torch", "triton" (our fused kernel, CUDA), or "auto" (triton on CUDA).
        seed: seeds the prefix / prompt initialisation.
    Returns the model, with only the method's parameters trainable.
    """
    if settings and isinstance(method, AdapterConfig):
        raise TypeError(f"attach takes an AdapterConfig or a method name with settings, not both: {sorted(settings)}")
    config = method if isinstance(method, AdapterConfig) else AdapterConfig(method, **settings)
    layers = _decoder(model).layers
    n_layers = len(layers)
    if config.n_adapted_layers is None:
        config = dataclasses.replace(config, n_adapted_layers=min(30, n_layers))
    method, n_prefix_tokens, n_adapted_layers = config.method, config.n_prefix_tokens, config.n_adapted_layers
    errors = []
    if method not in METHODS:
        errors.append(f"method {method!r} is not one of {', '.join(METHODS)}")
    if attn_backend not in BACKENDS:
        errors.append(f"attn_backend {attn_backend!r} is not one of {', '.join(BACKENDS)}")
    if method in PREFIX_METHODS + ("soft_prompt",) and not (isinstance(n_prefix_tokens, int) and n_prefix_tokens > 0):
        errors.append(f"n_prefix_tokens must be a positive integer, got {n_prefix_tokens!r}")
    if method in PREFIX_METHODS and not (isinstance(n_adapted_layers, int) and 0 < n_adapted_layers <= n_layers):
        errors.append(f"n_adapted_layers must be in 1..{n_layers} (the model has {n_layers} layers), "
                      f"got {n_adapted_layers!r}")
    if method == "lora" and not (isinstance(config.lora_rank, int) and config.lora_rank > 0):
        errors.append(f"lora_rank must be a positive integer, got {config.lora_rank!r}")
    if errors:
        raise ValueError("; ".join(errors))
    if getattr(model, "xprefix_config", None):
        raise ValueError(f"model already has a {model.xprefix_config.method!r} adapter attached")

    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(method == "full")
    _contiguous_head_input(model)
    if method in PREFIX_METHODS:
        inits = _prefix_inits(model, n_prefix_tokens, generator)
        for layer, init in list(zip(layers, inits))[n_layers - n_adapted_layers:]:
            attn = layer.self_attn
            attn.prefix_adapter = PrefixState(init, attn.config.num_attention_heads, gated=method == "adapter")
            attn.prefix_adapter.to(init.device)
    elif method == "soft_prompt":
        embed = _decoder(model).embed_tokens.weight
        if embed.device.type == "meta":
            init = torch.empty(n_prefix_tokens, embed.shape[1], device="meta")
        else:  # through embed_tokens, not its weight: Gemma scales embeddings by sqrt(hidden)
            ids = torch.randint(0, embed.shape[0], (n_prefix_tokens,), generator=generator).to(embed.device)
            with torch.no_grad():
                init = _decoder(model).embed_tokens(ids)
        soft = _decoder(model).soft_prompt = SoftPrompt(init).to(init.device)
        soft.handles = [_decoder(model).register_forward_pre_hook(soft.pre_hook, with_kwargs=True),
                        _decoder(model).register_forward_hook(soft.hook, with_kwargs=True)]
    elif method == "lora":
        for layer in layers:
            for name in LORA_TARGETS:
                lora = LoRALinear(getattr(layer.self_attn, name), config.lora_rank, config.lora_alpha)
                setattr(layer.self_attn, name, lora)
    set_attn_backend(model, attn_backend)
    model.xprefix_config = config
    return model


def set_attn_backend(model, attn_backend="auto"):
    """Route every attention layer through "xprefix" with the torch or triton backend."""
    if attn_backend not in BACKENDS:
        raise ValueError(f"attn_backend {attn_backend!r} is not one of {', '.join(BACKENDS)}")
    device = next(model.parameters()).device
    if attn_backend == "auto":
        attn_backend = "triton" if device.type == "cuda" else "torch"
    if attn_backend == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise ValueError("attn_backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for testing); "
                         "use 'torch' on the CPU")
    model.set_attn_implementation("xprefix")
    for layer in _decoder(model).layers:
        layer.self_attn.xprefix_backend = attn_backend


def set_gradient_checkpointing(model, enabled=True):
    """Turn activation checkpointing on (or off): each decoder layer keeps only its input and is
    recomputed in the backward, which costs about one more forward and saves most activation memory.

    transformers' checkpointing in its non-reentrant form. It works with every method, attached
    before or after: prefix states, gates and LoRA factors sit inside the layers and are recomputed
    with them, and soft prompts enter before the first layer. It acts in training mode only and
    drops the KV cache inside the layers it wraps, which training does not use (PEFT refuses prefix
    tuning under checkpointing because its prefix lives in that cache; ours does not).
    """
    if not enabled:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        return disable()
    # transformers >= 5.x renamed gradient_* to activation_*; the old name warns
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    # enabling also hooks the embeddings' output to require grad, which only the reentrant form needs:
    # the backward would then run through every layer below the first adapted one too (30 layers
    # instead of 10 for a prefix at the last 10 of 30), so the hook goes
    model.disable_input_require_grads()


def _triton_interpreted():
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"


def trainable_state_dict(model):
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _shape_signature(model):
    c = model.config
    return dict(model_type=c.model_type, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                vocab_size=c.vocab_size)


def _write_atomic(path, text=None, tensors=None):
    """Write text or tensors to a temporary name, then rename: a crash never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    if tensors is not None:
        save_file(tensors, str(tmp))
    else:
        tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_adapter(model, path, extra=None, push_to_hub=None):
    """Write `path`/adapter.safetensors (trainable tensors only), `path`/adapter_config.json and a
    model card, `path`/README.md; each written to a temporary name and renamed.

    Args:
        extra: more entries for adapter_config.json; the card shows `run`, `base_model` (a hub id),
            `config` (the run's settings), `train_sources` and `versions` where given.
        push_to_hub: a hub repo id ("user/repo"): also upload the folder there (see push_adapter).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model).items()}
    config = dict(dataclasses.asdict(model.xprefix_config), model=_shape_signature(model), **(extra or {}))
    _write_atomic(path / "adapter.safetensors", tensors=tensors)
    _write_atomic(path / "adapter_config.json", json.dumps(config, indent=2))
    import share  # the card and the upload live there; share imports this module
    _write_atomic(path / "README.md", share.model_card(path))
    if push_to_hub:
        share.push_adapter(path, push_to_hub)


def read_adapter_config(model, path, method=None):
    """The adapter config at `path` (a folder, or a hub repo id), checked against `model`'s shape and,
    if given, `method`.

    Every way an adapter folder can be wrong (missing, corrupt JSON, another model, another method)
    is a ValueError naming the folder, so callers can check it before any long work.
    """
    path = _local_or_hub(path)
    if (path / "adapter_model.safetensors").is_file() and not (path / "adapter.safetensors").is_file():
        raise ValueError(f"{path} holds a PEFT adapter (adapter_model.safetensors); load it with share.import_peft")
    if not (path / "adapter_config.json").is_file() or not (path / "adapter.safetensors").is_file():
        raise ValueError(f"{path} holds no adapter (expected adapter_config.json and adapter.safetensors)")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
        missing = {"model", *AdapterConfig.required_keys()} - set(config)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        want, saved_method = config["model"], config["method"]
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"adapter {path}: adapter_config.json is corrupt ({type(e).__name__}: {e}); "
                         f"expected the JSON that save_adapter writes") from None
    have = _shape_signature(model)
    if want != have:
        diff = {k: (want.get(k), have.get(k)) for k in want if want.get(k) != have.get(k)}
        raise ValueError(f"adapter {path} was trained on another model shape: (adapter, model) = {diff}")
    if method is not None and saved_method != method:
        raise ValueError(f"adapter {path} is a {saved_method!r} adapter, but the run's method is {method!r}")
    return config


def _read_tensors(path, name="adapter.safetensors"):
    try:
        return load_file(str(path / name))
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) on a torn file
        raise ValueError(f"adapter {path}: {name} is unreadable ({e})") from None


def _copy_tensors(model, tensors, path):
    """Copy `tensors` into the model's trainable parameters, which they must match exactly."""
    params = dict(model.named_parameters())
    expected = set(trainable_state_dict(model))
    if set(tensors) != expected:
        raise ValueError(f"adapter {path} does not fit this model: missing {sorted(expected - set(tensors))[:5]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"adapter {path}: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model


def load_adapter(model, path, attn_backend="auto", method=None):
    """Attach the adapter saved at `path` to `model` and load its weights; checks it fits. `path` is
    a folder, or a hub repo id ("user/repo") fetched with huggingface_hub (offline: from its cache)."""
    path = _local_or_hub(path)
    config = read_adapter_config(model, path, method)
    tensors = _read_tensors(path)  # before attaching, so a corrupt file leaves the model untouched
    attach(model, AdapterConfig.from_saved(config), attn_backend=attn_backend)
    return _copy_tensors(model, tensors, path)


# ---- the Hugging Face hub: model card, upload, download ---------------------------------------------

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _local_or_hub(path):
    """An existing path as it is; a string shaped like "user/repo" that names no local path is
    fetched from the hub with snapshot_download, which with HF_HUB_OFFLINE=1 reads its cache only."""
    if Path(path).exists() or not (isinstance(path, str) and REPO_ID.fullmatch(path)):
        return Path(path)
    from huggingface_hub import snapshot_download
    try:  # an adapter's files (ours or PEFT's) and its card, nothing else a repo may hold
        return Path(snapshot_download(path, allow_patterns=["adapter*", "README.md"]))
    except (OSError, ValueError) as e:  # every huggingface_hub error is one of these
        raise ValueError(f"adapter {path!r} is no local folder, and the hub repo {path} could not be fetched "
                         f"({type(e).__name__}: {e})") from None
