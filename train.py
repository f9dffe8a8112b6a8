"""Train one run of runs.yaml on its English training data.

    python train.py --run demo
    python train.py --run prefix_xnli_llama8b --dry-run      # config and parameter count, no weights
    python train.py --run demo --lr 1e-2 --max_steps 20      # any field can be overridden
    python train.py --run demo --resume                       # continue from the last checkpoint
    torchrun --nproc_per_node 8 train.py -- --run NAME        # data parallel over 8 GPUs ("--": script_args)
    torchrun --nproc_per_node 8 train.py -- --run NAME --parallel fsdp   # frozen base sharded (FSDP2)

Writes, under out_dir/<run>/: adapter/ (safetensors + config + model card README.md, at the end),
checkpoint/ (every save_every steps and on SIGINT/SIGTERM, written atomically), train_log.json,
config.json, and with report_to, logs/ (TensorBoard event files, the W&B run).

Under torchrun, batch_size stays the global batch: each of the N processes takes its 1/N of every
batch, sums its answer tokens' losses over the whole step's answer-token count, and the
summed gradients are the single-process run's gradient, so the loss curve, the lr schedule and
the adapter are the same (up to float rounding) for any N. The adapter and its optimizer are
replicated (a few MB); the frozen base is replicated too (ddp), or sharded with FSDP2 (fsdp).
Only rank 0 writes files.
"""
import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import adapters
import config as C
import data
import models
import runlock
import share
from distributed import all_reduce_step, init_distributed, is_rank0, script_args, shard_frozen_base, weight_bytes


def answer_loss(model, input_ids, attention_mask, labels):
    """Mean cross-entropy over answer tokens; the LM head runs on those positions only (the
    prompt's logits are never needed, and the vocabulary projection is a large part of the cost)."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (n_answer_tokens, vocab)
    return F.cross_entropy(logits.float(), targets[keep])


def pad_batch(rows, pad_id, *, left=False):
    """Token id lists padded into (ids, attention mask), both (B, T) long tensors. Right padding,
    or with left=True left padding, which ends every row at the last column (for generation)."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        columns = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, columns] = torch.tensor(row)
        mask[i, columns] = 1
    return ids, mask


GROUP_WINDOW = 50  # group_by_length sorts windows of this many batches of the shuffle


def batch_order(n_examples, batch_size, epoch, seed, lengths=None):
    """The example indices of every batch of one epoch: a fixed shuffle per (seed, epoch), so a
    resumed run sees exactly the batches the uninterrupted one would have.

    With `lengths` (group_by_length; each example's tokens), each window of GROUP_WINDOW batches of
    the shuffle is sorted longest first before it is cut into batches, and the batches are then
    shuffled: a batch holds examples of similar length, so it is padded little (the demo's 240
    XQuAD prompts in random batches of 8 were 39% padding tokens, grouped 5%), and the order stays random."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n_examples, generator=generator).tolist()
    if lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    window = batch_size * GROUP_WINDOW
    perm = [i for w in range(0, n_examples, window) for i in sorted(perm[w:w + window], key=lambda i: -lengths[i])]
    batches = [perm[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def save_checkpoint(model, optimizer, scheduler, step, path, log, data_layout):
    """Trainable tensors, optimizer, scheduler, step, data layout and RNG (CPU and CUDA), written to
    a temp name, flushed to disk, then renamed: a kill or power cut at any moment leaves either the
    previous checkpoint or this one, never a torn file."""
    path.mkdir(parents=True, exist_ok=True)
    state = dict(trainable=adapters.trainable_state_dict(model), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), step=step, log=log, data_layout=data_layout,
                 rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    tmp = path / "state.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # rename only data that is on disk
    tmp.replace(path / "state.pt")


def load_checkpoint(model, optimizer, scheduler, path, data_layout):
    """Restore what save_checkpoint wrote; returns (step, log). The batch at `step` follows from
    the step and the data layout, so the layout must be the one the checkpoint was written with."""
    try:
        state = torch.load(path / "state.pt", weights_only=True)  # weights_only: never unpickle code
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError for a bad file
        raise ValueError(f"checkpoint {path / 'state.pt'} is unreadable ({type(e).__name__}: {e}); "
                         f"pass --overwrite to start over") from None
    if state.get("data_layout") != data_layout:
        raise ValueError(f"checkpoint {path} was written with data layout {state.get('data_layout')}, this run has "
                         f"{data_layout}; resuming would not see the same batches (pass --overwrite to start over)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["log"]


def check_report_to(cfg):
    """Before any long work: every logger report_to names is installed."""
    missing = [k for k in cfg.report_to or [] if importlib.util.find_spec(k) is None]
    if missing:
        raise ValueError(f"report_to {', '.join(missing)} needs the package{'s' * (len(missing) > 1)}: "
                         f"pip install {' '.join(missing)}")


class Curves:
    """Training curves and evaluation scores for TensorBoard and W&B (cfg.report_to); rank 0 writes.

    TensorBoard's event files go to run_dir/logs, tags train/{loss,lr,grad_norm,tokens_per_s} per
    optimizer step and eval/<row>/<lang>/<metric> at the run's last training step. A training starts
    its writer with purge_step (the first step it will log), so readers drop what an interrupted run
    logged past its last checkpoint, or, for a fresh start, everything an overwritten run logged.
    W&B: training and evaluate.py log to one W&B run, whose id run_dir/logs/wandb_run_id keeps (a
    fresh training starts a new one); scores go to its summary; WANDB_MODE (e.g. offline) and
    WANDB_PROJECT (default xprefix) are read as W&B reads them.
    """

    def __init__(self, cfg, rank=0, resume_step=None):
        """resume_step: the step training continues from (0: a fresh start); None for evaluation."""
        check_report_to(cfg)
        self.tb = self.wandb = None
        kinds = (cfg.report_to or []) if rank == 0 else []
        logs = cfg.run_dir / "logs"
        try:  # evaluation: scores sit at the end of the training curve
            self.step = json.loads((cfg.run_dir / "train_log.json").read_text())["steps"]
        except (OSError, ValueError, KeyError):
            self.step = 0
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(logs), purge_step=None if resume_step is None else resume_step + 1)
        if "wandb" in kinds:
            import wandb
            id_file = logs / "wandb_run_id"
            fresh = resume_step == 0 or not id_file.is_file()
            run_id = uuid.uuid4().hex[:12] if fresh else id_file.read_text().strip()
            C.write_text_atomic(id_file, run_id)
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "xprefix"), name=cfg.name, id=run_id,
                                    resume="allow", dir=str(logs), config=dataclasses.asdict(cfg))

    def log(self, values, step):
        values = {k: v for k, v in values.items() if v is not None}  # a skipped step has no loss
        if self.tb:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb:
            self.wandb.log(values, step=step)

    def scores(self, row, lang, metrics):
        """One language's metrics, written at once (an interrupted evaluation keeps what it logged)."""
        values = {f"eval/{row}/{lang}/{k}": v for k, v in metrics.items()}
        if self.tb:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, self.step)
            self.tb.flush()
        if self.wandb:
            self.wandb.summary.update(values)

    def close(self):
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        self.tb = self.wandb = None


def build_features(cfg, task, tokenizer):
    """(input_ids, labels) of every training example; how many prompts lost tokens from the left
    to fit max_length with their answer: {n_examples, n_cut, max_tokens_cut, mean_tokens_cut}; and
    how many examples came from each source ({"race": 87866, "sciq": 11679}, say)."""
    with data.schema_errors(task, cfg.data_dir):
        examples = task.train_examples(cfg.data_dir, source=cfg.train_source, n=cfg.train_samples, seed=cfg.seed)
        if not examples:
            raise ValueError(f"run {cfg.name!r}: the training source gave no examples")
        features, removed = [], []
        for ex in tqdm(examples, desc="tokenizing", leave=False):
            ids, labels, n_cut = data.training_features(tokenizer, task.prompt(ex, cfg.prompt_style),
                                                        task.target(ex, cfg.prompt_style), cfg.max_length)
            features.append((ids, labels))
            removed += [n_cut] if n_cut else []
    cut = dict(n_examples=len(features), n_cut=len(removed), max_tokens_cut=max(removed, default=0),
               mean_tokens_cut=sum(removed) / max(len(removed), 1))
    if removed and is_rank0():
        print(f"{len(removed)} of {len(features)} training prompts cut from the left to fit max_length "
              f"{cfg.max_length} with their answer (up to {cut['max_tokens_cut']} tokens, mean {cut['mean_tokens_cut']:.0f})")
    sources = dict(Counter(ex.get("source") or cfg.train_source or task.default_source for ex in examples))
    return features, cut, sources


@dataclass
class Placement:
    """Where this process trains: its rank of world_size (0 of 1 without torchrun), its device and
    compute dtype, and whether it keeps fp32 master weights (method full in bf16)."""
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype
    master_weights: bool

    def autocast(self):
        """Full fine-tuning computes in `dtype` under autocast; every other run computes as it is."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.master_weights else contextlib.nullcontext()


def train(cfg: C.RunConfig, resume=False, overwrite=False):
    init_distributed()  # first: under torchrun rank 0 takes the lock and tells every rank whether it could
    with runlock.lock_run(cfg.run_dir):  # one writer per run folder; held until the last checkpoint is written
        return _train(cfg, resume, overwrite)


def preflight(cfg: C.RunConfig, resume, overwrite):
    """Every check that can fail before the model loads (so a typo fails now, not after hours of
    training), and where this process trains. Returns (task, Placement)."""
    run_dir, ckpt = cfg.run_dir, cfg.run_dir / "checkpoint"
    if (run_dir / "adapter" / "adapter_config.json").is_file() and not overwrite:
        raise SystemExit(f"run {cfg.name!r} is already finished ({run_dir / 'adapter'}); "
                         f"pass --overwrite to train it again")
    if (ckpt / "state.pt").is_file() and not (resume or overwrite):
        raise SystemExit(f"run {cfg.name!r} has a checkpoint at {ckpt}; pass --resume to continue it "
                         f"or --overwrite to start over")
    task = data.load_task(cfg.task)
    task.check_train_source(cfg.data_dir, cfg.train_source)  # e.g. Belebele's six-source file, before loading
    if cfg.eval_languages:
        data.check_languages(task, cfg.eval_languages)
    check_report_to(cfg)
    rank, world_size, rank_device = init_distributed()
    fsdp = cfg.parallel == "fsdp"
    if fsdp and rank_device is None:  # not launched by torchrun
        raise ValueError("parallel 'fsdp' shards the model over the processes torchrun starts: launch with "
                         "`torchrun --nproc_per_node N train.py ...`, or use --parallel ddp for one process")
    if fsdp and cfg.method == "full":
        raise ValueError("parallel 'fsdp' shards the frozen base and keeps the trainable tensors whole on every "
                         "rank; method 'full' trains every weight, so it would shard nothing: use --parallel ddp")
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch and must split evenly over the "
                         f"{world_size} processes; use a multiple of {world_size}")
    device, dtype = C.device_and_dtype(cfg)
    # Full fine-tuning keeps fp32 master weights and computes in `dtype` under autocast: AdamW on bf16
    # weights rounds most updates away (at lr 1e-5, an update below 2^-8 of a weight is lost). Other
    # methods train fp32 tensors already (adapters create them in fp32) beside the frozen bf16 base.
    master_weights = cfg.method == "full" and dtype != torch.float32
    if master_weights and dtype == torch.float16:
        raise ValueError("method 'full' with dtype float16 would need loss scaling, which train.py does not do; "
                         "use --dtype bfloat16 (fp32 master weights, bf16 compute) or float32")
    device = rank_device or device
    if rank == 0:
        print(models.dtype_message(cfg.dtype, device, dtype))
    return task, Placement(rank, world_size, device, dtype, master_weights)


def build_model(cfg: C.RunConfig, where: Placement):
    """The run's model with its adapter attached (seeded by cfg.seed) and its tokenizer."""
    torch.manual_seed(cfg.seed)
    # fsdp: the full model stays in host memory; shard_frozen_base moves it to the GPU one shard at a time
    model, tokenizer = models.load_model(cfg.model, dtype=torch.float32 if where.master_weights else where.dtype,
                                         device="cpu" if cfg.parallel == "fsdp" else where.device,
                                         trust_remote_code=cfg.trust_remote_code)
    adapters.attach(model, cfg.adapter_config, attn_backend=cfg.attn_backend, seed=cfg.seed)
    if cfg.gradient_checkpointing:
        adapters.set_gradient_checkpointing(model)
    if where.rank == 0:
        print(f"{cfg.name}: {cfg.method} on {cfg.model} ({where.device}, {where.dtype}"
              + (" compute, fp32 master weights" if where.master_weights else "")
              + f"), trainable params: {adapters.count_trainable(model):,}"
              + (f"; {where.world_size} processes ({cfg.parallel}), {cfg.batch_size // where.world_size} of each "
                 f"batch of {cfg.batch_size} per process" if where.world_size > 1 else ""))
    return model, tokenizer


def make_optimizer(cfg: C.RunConfig, model, n_examples):
    """AdamW over the trainable tensors and the run's lr schedule: (optimizer, scheduler, total steps)."""
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_scheduler
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler, total_steps


@contextlib.contextmanager
def stop_on_signal(ckpt):
    """SIGINT and SIGTERM set stop["signal"]: the step in flight finishes, is saved, and training
    exits with no work lost. A second signal leaves at once; the last checkpoint stays whole."""
    stop = {"signal": None}
    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise SystemExit(f"stopped by a second signal {signum}; last checkpoint: {ckpt}")
        stop["signal"] = signum
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def step_batches(features, step, cfg: C.RunConfig):
    """The example indices of optimizer step `step` (from 0): grad_accum batches of the global batch size."""
    n_examples = len(features)
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    epoch, in_epoch = divmod(step, steps_per_epoch)
    lengths = [len(ids) for ids, _ in features] if cfg.group_by_length else None
    batches = batch_order(n_examples, cfg.batch_size, epoch, cfg.seed, lengths)
    return batches[in_epoch * cfg.grad_accum:(in_epoch + 1) * cfg.grad_accum]


def accumulate_gradients(model, batches, features, *, where: Placement, global_batch, pad_id):
    """Forward and backward over one optimizer step's batches (grad_accum of them), this rank's part
    of each; returns this rank's share of the step's loss (summed over the ranks: the step's loss)."""
    n_answer_tokens = sum(sum(l != -100 for l in features[i][1]) for batch in batches for i in batch)
    per_rank = global_batch // where.world_size
    loss_share = 0.0
    for batch in batches:
        # this rank's part of the batch; a rank left with nothing (the epoch's last, short batch) still
        # runs one example, weighted 0, because fsdp's all-gathers need every rank in every forward
        rank_part = batch[where.rank * per_rank:(where.rank + 1) * per_rank]
        rows = [features[i] for i in rank_part or batch[:1]]
        ids, mask = pad_batch([ids for ids, _ in rows], pad_id)
        labels, _ = pad_batch([labels for _, labels in rows], -100)  # as long as their ids (data.training_features)
        ids, mask, labels = ids.to(where.device), mask.to(where.device), labels.to(where.device)
        with where.autocast():
            loss = answer_loss(model, ids, mask, labels)
        # weight each batch by its answer tokens over the whole step's (all ranks'): accumulation and
        # the ranks' summed gradients equal one big batch
        weight = (labels[:, 1:] != -100).sum().item() / n_answer_tokens if rank_part else 0.0
        (loss * weight).backward()
        loss_share += loss.item() * weight
    return loss_share


def train_step(model, optimizer, scheduler, features, *, cfg: C.RunConfig, where: Placement, step, pad_id, stop):
    """Optimizer step `step` + 1: its batches' gradients, summed over the ranks, clipped, applied.
    Returns (its train_log entry, its loss, whether any rank was signalled to stop)."""
    start = time.time()
    batches = step_batches(features, step, cfg)
    n_all_tokens = sum(len(features[i][0]) for batch in batches for i in batch)  # prompts and answers, no padding
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, batches, features, where=where, global_batch=cfg.batch_size, pad_id=pad_id)
    stopping = stop["signal"] is not None
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the trainable tensors
    if where.world_size > 1:
        loss, stopping = all_reduce_step(params, loss, stopping, where.device)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if not finite and not cfg.skip_nonfinite:
        ckpt = cfg.run_dir / "checkpoint"
        raise SystemExit(f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step + 1}; "
                         f"last good checkpoint: {ckpt if (ckpt / 'state.pt').is_file() else 'none'} "
                         f"(skip_nonfinite: true skips such steps instead)")
    if finite:
        optimizer.step()
    elif where.rank == 0:  # skip_nonfinite: drop this batch's update; the step still counts, so the data
        # order and the lr schedule do not shift, and a resumed run skips the same step
        tqdm.write(f"step {step + 1}: non-finite loss ({loss}) or gradient norm ({grad_norm}); skipped")
    scheduler.step()
    entry = dict(step=step + 1, loss=loss if finite else None, lr=scheduler.get_last_lr()[0],
                 grad_norm=grad_norm if finite else None, **({} if finite else dict(skipped=True)),
                 tokens_per_s=n_all_tokens / (time.time() - start))
    return entry, loss, stopping


def _train(cfg: C.RunConfig, resume, overwrite):
    task, where = preflight(cfg, resume, overwrite)
    model, tokenizer = build_model(cfg, where)
    if cfg.method == "base":
        if where.rank == 0:
            print("method 'base' has nothing to train; run evaluate.py")
        return None
    if cfg.parallel == "fsdp":
        shard_frozen_base(model, where.device)
        adapters.set_attn_backend(model, cfg.attn_backend)  # attach chose "auto"'s backend on the CPU
    features, train_truncation, train_sources = build_features(cfg, task, tokenizer)
    if where.rank == 0:
        print("training examples per source: " + ", ".join(f"{k} {v:,}" for k, v in train_sources.items()))
    optimizer, scheduler, total_steps = make_optimizer(cfg, model, len(features))
    # what fixes the batch of every step: a resumed run must match it exactly
    # (group_by_length only when on, so checkpoints written before it existed still resume)
    data_layout = dict(n_examples=len(features), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       seed=cfg.seed, **({"group_by_length": True} if cfg.group_by_length else {}))
    ckpt = cfg.run_dir / "checkpoint"
    step, log = 0, []
    if resume and (ckpt / "state.pt").is_file():
        step, log = load_checkpoint(model, optimizer, scheduler, ckpt, data_layout)  # every rank reads it
        if where.rank == 0:
            print(f"resumed from {ckpt} at step {step}/{total_steps}")
    if where.world_size > 1:
        for p in model.parameters():
            if p.requires_grad:  # the ranks agree already (same seed, weights, checkpoint); this makes it certain
                dist.broadcast(p.data, src=0)
    if where.rank == 0:
        C.write_json_atomic(cfg.run_dir / "config.json", C.provenance(cfg))
    curves = Curves(cfg, where.rank, resume_step=step)

    model.train()
    start = time.time()
    with stop_on_signal(ckpt) as stop, contextlib.closing(curves), \
            tqdm(total=total_steps, initial=step, desc=f"train {cfg.name}", disable=where.rank != 0) as bar:
        while step < total_steps:
            entry, loss, stopping = train_step(model, optimizer, scheduler, features, cfg=cfg, where=where, step=step,
                                               pad_id=tokenizer.pad_token_id, stop=stop)
            step += 1
            log.append(entry)
            curves.log({f"train/{k}": entry[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s")}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if where.rank == 0 and (step % cfg.save_every == 0 or stopping):
                save_checkpoint(model, optimizer, scheduler, step, ckpt, log, data_layout)
            if stopping:
                if where.world_size > 1:
                    dist.barrier()  # no rank exits (and has torchrun stop rank 0) before the checkpoint is saved
                raise SystemExit(f"stopped by signal {stop['signal'] or '(to another rank)'} at step {step}; "
                                 f"checkpoint saved to {ckpt}; continue with --resume")
    seconds = time.time() - start
    if where.rank != 0:
        return cfg.run_dir / "adapter"
    save_checkpoint(model, optimizer, scheduler, step, ckpt, log, data_layout)
    return finish(cfg, model, log, where=where, steps=step, seconds=seconds, n_examples=len(features),
                  train_truncation=train_truncation, train_sources=train_sources)


def finish(cfg: C.RunConfig, model, log, *, where: Placement, steps, seconds, n_examples, train_truncation,
           train_sources):
    """Rank 0, after the last step: the adapter with its model card, train_log.json, and the upload."""
    adapter_dir = cfg.run_dir / "adapter"
    provenance = C.provenance(cfg)
    base_model = models.MODELS[cfg.model].hub_id if cfg.model in models.MODELS else cfg.model
    # what the model card shows: the run's settings, what it learnt from, what ran it
    adapters.save_adapter(model, adapter_dir, extra=dict(
        run=cfg.name, base_model=base_model, config=provenance["config"], train_sources=train_sources,
        versions=dict(provenance["versions"], xprefix_commit=provenance["git_commit"])))
    skipped = [entry["step"] for entry in log if entry.get("skipped")]
    summary = dict(provenance, steps=steps, train_examples=n_examples, trainable_params=adapters.count_trainable(model),
                   seconds=seconds, final_loss=log[-1]["loss"] if log else None, n_skipped_steps=len(skipped),
                   skipped_steps=skipped, world_size=where.world_size,
                   parallel=cfg.parallel if where.world_size > 1 else None,
                   weights_gib_per_rank=weight_bytes(model) / 2**30, log=log)
    summary.update(train_truncation=train_truncation, train_sources=train_sources)
    if where.device.type == "cuda":
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    C.write_json_atomic(cfg.run_dir / "train_log.json", summary)
    print(f"saved adapter to {adapter_dir} after {steps} steps in {seconds:.0f}s"
          + (f"; {len(skipped)} non-finite step(s) skipped: {skipped}" if skipped else ""))
    if cfg.push_to_hub:  # last: a failed upload loses nothing (evaluate.py pushes again, with scores)
        share.push_adapter(adapter_dir, cfg.push_to_hub)
        print(f"pushed {adapter_dir} to the hub repo {cfg.push_to_hub}")
    return adapter_dir


def dry_run(cfg: C.RunConfig):
    """Build the model on the meta device and report the trainable parameter count."""
    print(C.to_json(cfg))
    model = models.meta_model(cfg.model)
    adapters.attach(model, cfg.adapter_config, attn_backend="torch")
    print(f"trainable params: {adapters.count_trainable(model):,}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run name of runs.yaml")
    parser.add_argument("--runs-file", default=str(C.RUNS_FILE))
    parser.add_argument("--dry-run", action="store_true", help="print config and trainable params, then exit")
    parser.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    C.add_override_args(parser)
    args = parser.parse_args(script_args(argv))
    try:
        cfg = C.get_run(args.run, C.overrides_from_args(args), args.runs_file)
        if args.dry_run:
            return dry_run(cfg)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError) as e:  # bad input (ours say what and where) or an unreadable / unwritable path
        sys.exit(f"error: {e}")
    finally:
        if dist.is_initialized():  # under torchrun
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
