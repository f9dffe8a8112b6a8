"""Run EleutherAI lm-evaluation-harness tasks on a run's base model and its adapter.

    python evaluate.py --run NAME --harness xcopa,xstorycloze,xwinograd,pawsx,mlqa_en_en
    python evaluate.py --run NAME --harness mgsm_native_cot_de --harness-fewshot 8 --harness-limit 50
    python harness.py --model_args run=NAME --tasks xcopa_et      # the harness's own CLI, our model

The harness (PyPI `lm-eval`, an optional extra like PEFT) does the rest through its own Python
API: its task registry, prompts, few-shot sampling, requests, metrics and filters. What it gets
from us is a model: `XPrefixLM`, the harness's `HFLM` given our already-built model, i.e. the
run's base model (models.load_model) with the run's adapter attached (adapters.load_adapter, any
method) or, for the base row, none, every attention layer on our "xprefix" attention path
(torch, or the Triton kernel on CUDA, as the run's attn_backend says). It is registered with the
harness as model "xprefix" (model_args: run=NAME, optional row=base, runs_file=PATH).

evaluate.py writes each task's result under runs/<name>/harness/<row>/<task>.json (the harness's
metrics, its per-example responses, the task's config, our provenance), and a table per benchmark
in runs/<name>/harness/results.{json,md}, rows by languages (read from the task name, xcopa_et ->
et, belebele_eng_Latn -> eng_Latn), averaged by script, family and resource level where data.LANGUAGES
knows the language. Unlike our own evaluation, tasks are recomputed on every call.
"""
import json
import re
import sys
import time
from pathlib import Path

import torch

import config as C

LM_EVAL = "lm-eval==0.4.13"  # the release this bridge is tested with
try:
    import lm_eval
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("lm_eval"):
        raise
    raise ModuleNotFoundError(f"lm-evaluation-harness tasks need the optional package lm-eval: pip install {LM_EVAL}",
                              name="lm_eval") from None

import adapters
import data
import models


@register_model("xprefix")
class XPrefixLM(HFLM):
    """The harness's HFLM on a run's model: the base model with the run's adapter, or none (row "base").

    Args:
        run: a run name of `runs_file`, or a config.RunConfig.
        row: "base" (no adapter) or the run's method (its trained adapter, runs/<name>/adapter); None: the method.
        pretrained, tokenizer: the run's base model and tokenizer if already loaded (so evaluate.py
            loads them once for both rows); an adapter attached to it stays attached.
        **kwargs: HFLM's (batch_size, max_length, ...). `device` picks the device to load on; the
            harness CLI's default cuda:0 falls back to the CPU where there is no CUDA.
    """

    def __init__(self, run, row=None, runs_file=None, pretrained=None, tokenizer=None, **kwargs):
        cfg = run if isinstance(run, C.RunConfig) else C.get_run(run, path=runs_file or C.RUNS_FILE)
        row = row or cfg.method
        if row not in ("base", cfg.method):
            raise ValueError(f"row {row!r}: run {cfg.name!r} has the rows 'base' and {cfg.method!r}")
        adapter_dir = _adapter_dir(cfg) if row != "base" else None  # checked before the model loads
        device = kwargs.pop("device", None)
        if pretrained is None:
            default_device, dtype = C.device_and_dtype(cfg)
            if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                device = default_device
            pretrained, tokenizer = models.load_model(cfg.model, dtype=dtype, device=device,
                                                      trust_remote_code=cfg.trust_remote_code)
        if row == "base":
            adapters.set_attn_backend(pretrained, cfg.attn_backend)
        else:
            adapters.load_adapter(pretrained, adapter_dir, attn_backend=cfg.attn_backend, method=cfg.method)
        pretrained.eval()
        self.cfg, self.row = cfg, row
        self.adapter = adapter_dir and str(adapter_dir)
        self.adapter_sha256 = adapter_dir and data.file_sha256(adapter_dir / "adapter.safetensors")
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def get_model_info(self):
        # HFLM's asks the hub for a revision of `pretrained`, which here is a model, not a hub id
        return dict(model=self.cfg.model, row=self.row, adapter=self.adapter, adapter_sha256=self.adapter_sha256,
                    attn_backend=self.cfg.attn_backend, model_dtype=str(self.model.dtype),
                    model_num_parameters=self.model.num_parameters())


def _adapter_dir(cfg):
    adapter_dir = cfg.run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"run {cfg.name!r} has no trained adapter at {adapter_dir}; "
                         f"run `python train.py --run {cfg.name}` first")
    return adapter_dir


# --- task names, languages and tables ---------------------------------------------------------

_FLORES = re.compile(r"(.+)_([a-z]{3}_[A-Z][a-z]{3})$")  # belebele_eng_Latn
_ISO = re.compile(r"(.+)_([a-z]{2})$")                   # xcopa_et, mlqa_en_de (questions in de)
_ALIASES = {"jp": "ja"}  # xwinograd's code for Japanese


def task_language(name):
    """(benchmark, language or None) of a harness task name: its last part when that is a
    two-letter or a FLORES code, e.g. xcopa_et -> (xcopa, et), mgsm_native_cot_de -> (mgsm_native_cot, de)."""
    match = _FLORES.fullmatch(name) or _ISO.fullmatch(name)
    if not match:
        return name, None
    return match.group(1), _ALIASES.get(match.group(2), match.group(2))


def check_tasks(task_manager, names):
    """Raise ValueError, before any model is loaded, naming every task the harness does not know."""
    unknown = [n for n in names if n not in task_manager.all_tasks and not Path(n).is_file()]
    if unknown:
        raise ValueError(f"lm-evaluation-harness has no task, group or tag {', '.join(unknown)} (lm-eval "
                         f"{lm_eval.__version__}; `python harness.py ls tasks` lists them; local task YAMLs: "
                         f"--harness-include DIR)")


def load_tasks(task_manager, names):
    """The harness's Task objects (leaf tasks of any group or tag), their data loaded, by name."""
    try:
        return task_manager.load(list(names))["tasks"]
    except ImportError as e:
        # the harness's xquad imports transformers.data.metrics.squad_metrics, gone in transformers 5
        raise ValueError(f"lm-eval could not build {', '.join(names)}: {type(e).__name__}: {e}") from None


def _primary_metrics(result):
    """The "metric,filter" keys of one task's harness result, in the harness's order (no stderr)."""
    return [k for k in result if "," in k and "_stderr" not in k]


def _markdown(header, lines):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in lines])


def tabulate(rows):
    """Markdown tables of {row: {task: metrics}}: per benchmark and metric, rows by languages
    (average last); then, per benchmark, its first metric averaged by script, family and resource
    level over the languages data.LANGUAGES knows."""
    benchmarks = {}
    for row, results in rows.items():
        for task in results:
            benchmark, lang = task_language(task)
            benchmarks.setdefault(benchmark, {}).setdefault(lang or task, task)
    parts = []
    for benchmark, tasks in benchmarks.items():
        some = next(results[t] for results in rows.values() for t in tasks.values() if t in results)
        for i, metric in enumerate(_primary_metrics(some)):
            lines = []
            for row, results in rows.items():
                values = [results.get(t, {}).get(metric) for t in tasks.values()]
                known = [v for v in values if isinstance(v, (int, float))]
                lines.append([row] + ["-" if not isinstance(v, (int, float)) else f"{v:.4f}" for v in values]
                             + [f"{sum(known) / len(known):.4f}" if known else "-"])
            parts.append(f"{benchmark}, {metric}:\n\n" + _markdown(["row", *tasks, "avg"], lines))
            if i == 0 and sum(lang in data.LANGUAGES for lang in tasks) > 1:
                for by in ("script", "family", "resource"):
                    table = {row: data.group_averages({lang: results[t][metric] for lang, t in tasks.items()
                                                       if lang in data.LANGUAGES and t in results
                                                       and isinstance(results[t].get(metric), (int, float))}, by)
                             for row, results in rows.items()}
                    if any(table.values()):
                        names = sorted({g for groups in table.values() for g in groups})
                        parts.append(f"{benchmark}, {metric}, by {by}:\n\n" + _markdown(
                            ["row", *names], [[row] + [f"{groups[g]:.4f}" if g in groups else "-" for g in names]
                                              for row, groups in table.items()]))
    return "\n\n".join(parts)


# --- a run's rows through the harness ---------------------------------------------------------

def _jsonable(obj):
    return json.loads(json.dumps(obj, default=handle_non_serializable))


def evaluate_run(cfg, names, *, no_base=False, limit=None, num_fewshot=None, include_path=None):
    """Every harness task of `names` on the run's base model (unless no_base) and its adapter;
    each task's result written to runs/<name>/harness/<row>/<task>.json, the tables to
    runs/<name>/harness/results.{json,md}. Returns {row: {task: metrics}}.

    Args:
        names: harness task, group or tag names (or task YAML paths).
        limit: the first `limit` documents of each task (a fraction of them if < 1); None: all.
        num_fewshot: the harness's few-shot count; None: each task's default (mgsm_native_cot: 0).
        include_path: a folder of extra task YAMLs (the harness's include_path).
    """
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise ValueError("--harness runs in one process; start evaluate.py without torchrun")
    task_manager = TaskManager(include_path=include_path)
    check_tasks(task_manager, names)
    tasks = load_tasks(task_manager, names)  # data and task code before the model: errors come early
    if cfg.method != "base":
        _adapter_dir(cfg)
    device, dtype = C.device_and_dtype(cfg)
    model, tokenizer = models.load_model(cfg.model, dtype=dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    meta = dict(C.provenance(cfg), limit=limit, num_fewshot=num_fewshot)
    meta["versions"]["lm_eval"] = lm_eval.__version__
    out = cfg.run_dir / "harness"
    rows = {}
    # the base row first: the adapter then attaches to the same model, loaded once
    order = (["base"] if not no_base or cfg.method == "base" else []) + ([cfg.method] if cfg.method != "base" else [])
    for row in order:
        lm = XPrefixLM(cfg, row=row, pretrained=model, tokenizer=tokenizer, batch_size=cfg.eval_batch_size)
        start = time.time()
        result = lm_eval.simple_evaluate(lm, tasks=list(tasks.values()), num_fewshot=num_fewshot, limit=limit,
                                         task_manager=task_manager, bootstrap_iters=0, log_samples=True)
        seconds = time.time() - start
        rows[row] = {}
        for task in result["configs"]:
            benchmark, lang = task_language(task)
            metrics = {k: v for k, v in result["results"][task].items() if k not in ("alias", "name")}
            samples = [{k: v for k, v in s.items() if k not in ("doc", "arguments")}  # the prompt is in the config
                       for s in result["samples"].get(task, [])]
            record = dict(task=task, benchmark=benchmark, language=lang, row=row, metrics=metrics,
                          n=result["n-samples"][task]["effective"], n_shot=result["n-shot"].get(task),
                          task_config=result["configs"][task], task_version=result["versions"].get(task),
                          adapter=lm.adapter, adapter_sha256=lm.adapter_sha256, seconds=seconds, **meta,
                          predictions=samples)
            C.write_json_atomic(out / row / f"{task}.json", _jsonable(record))
            rows[row][task] = metrics
        print(f"  harness {row}: {len(result['configs'])} task(s) in {seconds:.0f} s")
    md = tabulate(rows)
    C.write_json_atomic(out / "results.json", _jsonable(dict(meta, tasks=list(names), rows=rows)))
    C.write_text_atomic(out / "results.md", f"# {cfg.name}: lm-evaluation-harness ({cfg.model})\n\n{md}\n")
    print(f"\n{cfg.name}: lm-evaluation-harness ({cfg.model}, {device})\n\n{md}\n\nwritten to {out}")
    return rows


def main(argv=None):
    """The harness's own command line with model "xprefix" registered: --model xprefix is implied."""
    from lm_eval.__main__ import cli_evaluate
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["ls"], ["validate"]):
        sys.argv = ["lm-eval", *argv]
    else:
        rest = argv[1:] if argv[:1] == ["run"] else argv
        sys.argv = ["lm-eval", "run", *([] if "--model" in rest else ["--model", "xprefix"]), *rest]
    cli_evaluate()


if __name__ == "__main__":
    main()
