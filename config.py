"""Run configuration: `runs.yaml` is a list of named runs, loaded into a typed RunConfig.

Unknown keys and bad values are collected and reported together in one ValueError; command-line
overrides (`--lr 1e-3`) are parsed with the field's type. Relative `data_dir` and `out_dir` are
resolved against the folder of runs.yaml, so runs work from any working directory.
"""
import argparse
import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
RUNS_FILE = ROOT / "runs.yaml"


def eval_setting(default=dataclasses.MISSING, **metadata):
    """A field a language's evaluation result depends on: evaluate.py reuses a cached result only
    where every such field (and the adapter's hash) matches. `before`: what a result written before
    the field existed was made with, where that is not its default; `before_field`: the field whose
    value it was made with (eval_seed's draws were seed's)."""
    return field(default=default, metadata=dict(eval_setting=True, **metadata))


@dataclass
class RunConfig:
    # fields made with eval_setting key evaluate.py's cached results; batch sizes and the attention
    # backend change speed, not the answer (a sample is drawn per prompt, whatever the batch)
    name: str
    model: str = eval_setting()         # models.MODELS name or a local HF model folder
    method: str                         # adapters.METHODS
    task: str = eval_setting()          # data.TASKS
    n_prefix_tokens: int = 10
    n_adapted_layers: int | None = None  # None: last min(30, all) layers
    lora_rank: int = 4
    lora_alpha: float = 8.0
    attn_backend: str = "auto"          # torch | triton | auto (triton on CUDA)
    data_dir: str | None = eval_setting(None)  # None: the Hugging Face hub; else local copies in hub layout
    train_source: str | None = None     # task's default English training set, or a named alternative
    train_samples: int | None = None    # None: the whole training source
    eval_languages: list[str] | None = None  # None: every language of the task
    eval_samples: int | None = eval_setting(1000)  # per language; None: all
    eval_subset: str | None = eval_setting(None)   # e.g. held-out articles, see data/
    eval_split: str | None = eval_setting(None)    # None: the task's default split (XNLI: test, as the paper)
    prompt_style: str = eval_setting("paper")
    choice_scoring: str = eval_setting("loglik")  # choice tasks: loglik (rank options) | generate (match an option)
    lr: float = 3e-3
    epochs: float = 2.0
    max_steps: int | None = None        # stop early (smoke tests, demos)
    weight_decay: float = 0.02
    lr_schedule: str = "linear"         # linear | cosine | constant
    warmup_ratio: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    group_by_length: bool = False       # batch examples of similar length (less padding); see train.batch_order
    eval_batch_size: int = 8
    max_length: int = eval_setting(1024)
    # how evaluation meets max_length: "whole" keeps every prompt whole (max_length bounds training
    # only; the model's context window still cuts, counted and warned); "subset" scores only the
    # examples whose prompt and answer fit max_length in every evaluated language (the same ids in
    # each, so languages stay comparable: for CPU-sized runs); "cut" cuts prompts from the left as
    # training does, counted per language (and lost XQuAD answers, MGSM exemplars) and warned about.
    # Before eval_fit, prompts were cut unrecorded (and choices cut per option, samples seeded per
    # batch), which no value of today reproduces.
    eval_fit: str = eval_setting("whole", before="cut, unrecorded")
    max_new_tokens: int | None = eval_setting(None)  # None: the task's default
    do_sample: bool | None = eval_setting(None)  # None: the task's default (sampling for XQuAD, as the paper)
    temperature: float = eval_setting(0.1)
    top_p: float = eval_setting(0.75)
    dtype: str = eval_setting("auto")  # auto (bf16 on CUDA and CPUs with native bf16, else fp32) | float32 | bfloat16 | float16
    seed: int = 0                       # training: initialisation, example draw and order
    # which examples evaluation draws, and its sampling generator: apart from `seed`, so that runs of
    # several training seeds are scored on the same examples and pair (report.py --compare)
    eval_seed: int = eval_setting(0, before_field="seed")
    # how eval_samples draws: "rows" one at a time; "groups" whole premises (XNLI), paragraphs (XQuAD),
    # passages (Belebele), up to eval_samples rows. XNLI's premises hold one hypothesis per label, so
    # whole ones keep a label-biased model's score from moving with the draw (data.sample)
    eval_draw: str = eval_setting("rows")
    save_every: int = 200               # checkpoint every N optimizer steps
    skip_nonfinite: bool = False        # skip (and log) a step with non-finite loss or gradients; else stop
    gradient_checkpointing: bool = False  # recompute layer activations in the backward: less memory, ~1 more forward
    parallel: str = "ddp"               # under torchrun: ddp (replicated model) | fsdp (frozen base sharded)
    # training curves (loss, lr, grad norm, tokens/s per step) and scores per language: tensorboard
    # (event files in run_dir/logs) and/or wandb (its mode, e.g. offline, from WANDB_MODE)
    report_to: list[str] | None = None
    push_to_hub: str | None = None      # a hub repo id ("user/repo"): upload the adapter and its model card there
    out_dir: str = "runs"
    trust_remote_code: bool = False
    description: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def adapter_config(self):
        """The run's adapters.AdapterConfig: its fields of the same names."""
        from adapters import AdapterConfig  # adapters imports torch and transformers; config stays light
        return AdapterConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AdapterConfig)})


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
EVAL_SETTINGS = tuple(name for name, f in FIELDS.items() if f.metadata.get("eval_setting"))
CHOICES = {
    "method": ("base", "soft_prompt", "prefix", "adapter", "lora", "full"),
    "attn_backend": ("auto", "torch", "triton"),
    "lr_schedule": ("linear", "cosine", "constant"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "prompt_style": ("paper", "harness"),
    "choice_scoring": ("loglik", "generate"),
    "eval_fit": ("whole", "subset", "cut"),
    "eval_draw": ("rows", "groups"),
    "parallel": ("ddp", "fsdp"),
    "report_to": ("tensorboard", "wandb"),  # each item of the list
}


def recorded(saved: dict, name: str):
    """Field `name`'s value in a config a run saved (results.json's "config"). A config saved before
    the field existed was made with the field's `before`, its `before_field`'s value, else its
    default: a new field's default keeps the old behaviour."""
    if name in saved:
        return saved[name]
    f = FIELDS[name]
    if "before_field" in f.metadata:
        return recorded(saved, f.metadata["before_field"])
    if "before" in f.metadata:
        return f.metadata["before"]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


POSITIVE = ("n_prefix_tokens", "n_adapted_layers", "lora_rank", "batch_size", "grad_accum", "eval_batch_size",
            "max_length", "train_samples", "eval_samples", "max_steps", "save_every", "max_new_tokens")


def _check_type(value, tp):
    """Whether `value` (from YAML) fits the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_check_type(v, item) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp):
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def validate(raw: dict, where: str) -> list[str]:
    """All problems of one run's raw mapping, as messages."""
    problems = []
    for key in raw:
        if key not in FIELDS:
            problems.append(f"{where}: unknown key {key!r} (known keys: {', '.join(FIELDS)})")
    for name, f in FIELDS.items():
        if name not in raw:
            if f.default is dataclasses.MISSING:
                problems.append(f"{where}: missing required key {name!r}")
            continue
        value = raw[name]
        items = value if isinstance(value, list) else [] if value is None else [value]  # report_to is a list
        if not _check_type(value, f.type):
            problems.append(f"{where}: {name}={value!r} should be {_type_name(f.type)}")
        elif name in CHOICES and any(v not in CHOICES[name] for v in items):
            problems.append(f"{where}: {name}={value!r} is not one of {', '.join(CHOICES[name])}")
        elif name in POSITIVE and value is not None and value <= 0:
            problems.append(f"{where}: {name}={value!r} must be positive")
    for name in ("lr", "epochs"):
        if isinstance(raw.get(name), (int, float)) and raw[name] <= 0:
            problems.append(f"{where}: {name}={raw[name]!r} must be positive")
    for name in ("weight_decay", "warmup_ratio"):
        if isinstance(raw.get(name), (int, float)) and not 0 <= raw[name] < 1:
            problems.append(f"{where}: {name}={raw[name]!r} must be in [0, 1)")
    if isinstance(raw.get("top_p"), (int, float)) and not 0 < raw["top_p"] <= 1:
        problems.append(f"{where}: top_p={raw['top_p']!r} must be in (0, 1]")
    if isinstance(raw.get("push_to_hub"), str) and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", raw["push_to_hub"]):
        problems.append(f"{where}: push_to_hub={raw['push_to_hub']!r} should be a hub repo id, user/repo")
    return problems


def _yaml_floats(raw: dict) -> dict:
    """YAML 1.1 reads `lr: 1e-5` (no dot in the mantissa) as the string "1e-5": for a float field, a
    string that is a number in float syntax is that number."""
    out = dict(raw)
    for name, value in raw.items():
        if name in FIELDS and isinstance(value, str) and FIELDS[name].type in (float, float | None):
            try:
                out[name] = float(value)
            except ValueError:
                pass  # reported by validate as a wrong type
    return out


def load_runs(path=RUNS_FILE) -> dict[str, dict]:
    """Every run of `path` as a raw mapping, defaults merged; problems of all runs in one error."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: malformed YAML{line}: {getattr(e, 'problem', e)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise ValueError(f"{path}: expected a mapping with a list under 'runs:' (and optional 'defaults:')")
    defaults = doc.get("defaults") or {}
    runs, problems = {}, []
    for i, entry in enumerate(doc["runs"]):
        if not isinstance(entry, dict) or "name" not in entry:
            problems.append(f"{path}: runs[{i}] must be a mapping with a 'name'")
            continue
        raw = _yaml_floats({**defaults, **entry})
        if raw["name"] in runs:
            problems.append(f"{path}: run {raw['name']!r} is defined twice")
        problems += validate(raw, f"{path}: run {raw['name']!r}")
        runs[raw["name"]] = raw
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems))
    return runs


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    for name in ("data_dir", "out_dir"):
        value = getattr(cfg, name)
        if value is not None and not Path(value).expanduser().is_absolute():
            setattr(cfg, name, str((base / value).resolve()))
    return cfg


def get_run(name: str, overrides: dict | None = None, path=RUNS_FILE) -> RunConfig:
    """The named run of `path` with `overrides` applied; ValueError lists known names."""
    runs = load_runs(path)
    if name not in runs:
        raise ValueError(f"unknown run {name!r}; known runs: {', '.join(runs)}")
    raw = {**runs[name], **(overrides or {})}
    problems = validate(raw, f"run {name!r}")
    if problems:
        raise ValueError("\n".join(problems))
    return _resolve_paths(RunConfig(**raw), Path(path).resolve().parent)


def _parse_value(text: str, tp):
    """Parse one command-line value for a field of annotation `tp`, via YAML's scalars."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; a number is meant
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    if _check_type(value, tp):
        return float(value) if tp is float else value
    if typing.get_origin(tp) is not None and any(typing.get_origin(t) is list for t in typing.get_args(tp)):
        items = [v for v in text.split(",") if v]  # --eval_languages en,de
        if _check_type(items, tp):
            return items
    raise ValueError(f"--{{name}} {text!r} should be {_type_name(tp)}")


def add_override_args(parser: argparse.ArgumentParser):
    overrides = parser.add_argument_group("overrides of the run's fields")
    for name in FIELDS:
        if name != "name":
            overrides.add_argument(f"--{name}", dest=f"override_{name}", metavar="VALUE", default=None)


def overrides_from_args(args) -> dict:
    overrides, problems = {}, []
    for name, f in FIELDS.items():
        text = getattr(args, f"override_{name}", None)
        if text is None:
            continue
        try:
            overrides[name] = _parse_value(text, f.type)
        except ValueError as e:
            problems.append(str(e).replace("{name}", name))
    if problems:
        raise ValueError("\n".join(problems))
    return overrides


def to_json(cfg: RunConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


def device_and_dtype(cfg: RunConfig):
    """CUDA when present. dtype auto: bf16 on CUDA, and on a CPU that multiplies bf16 natively (AMX or
    AVX-512 BF16; see models.auto_dtype), fp32 on other CPUs, where bf16 matmuls are emulated and slower."""
    import torch

    import models
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, getattr(torch, cfg.dtype) if cfg.dtype != "auto" else models.auto_dtype(device)[0]


def provenance(cfg: RunConfig) -> dict:
    """What produced a result: config, code version, library versions, device."""
    import platform
    import subprocess

    import torch
    import transformers
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    dtype = str(device_and_dtype(cfg)[1]).removeprefix("torch.")  # what dtype "auto" resolved to here
    return dict(config=dataclasses.asdict(cfg), git_commit=commit, git_dirty=dirty, device=device, dtype=dtype,
                versions=dict(python=platform.python_version(), torch=torch.__version__,
                              transformers=transformers.__version__))


def write_text_atomic(path, text):
    """Write to a temporary file and rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))
