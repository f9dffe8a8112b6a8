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
micro-batch, sums its answer tokens' losses over the whole step's answer-token count, and the
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


def answer_loss(model, input_ids, attention_mask, labels):
    """Mean cross-entropy over answer tokens; the LM head runs on those positions only (the
    prompt's logits are never needed, and the vocabulary projection is a large part of the cost)."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (n_answer_tokens, vocab)
    return F.cross_entropy(logits.float(), targets[keep])


def collate(features, pad_id):
    """Right-pad (input_ids, labels) pairs into tensors."""
    length = max(len(ids) for ids, _ in features)
    input_ids = torch.full((len(features), length), pad_id, dtype=torch.long)
    labels = torch.full((len(features), length), -100, dtype=torch.long)
    mask = torch.zeros((len(features), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(features):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return input_ids, mask, labels


def batch_order(n_examples, batch_size, epoch, seed):
    """The example indices of every batch of one epoch: a fixed shuffle per (seed, epoch), so a
    resumed run sees exactly the batches the uninterrupted one would have."""
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [perm[i:i + batch_size] for i in range(0, n_examples, batch_size)]


def script_args(argv=None):
    """The command line without a leading "--". Under torchrun it is needed: torchrun's own parser
    rejects `train.py --run NAME` (`--run` could abbreviate its --run-path; pytorch/pytorch#120601),
    so the form is `torchrun ... train.py -- --run NAME`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return argv[1:] if argv[:1] == ["--"] else argv


def init_distributed():
    """Join torchrun's process group when launched by torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK):
    NCCL on cuda:LOCAL_RANK, or gloo on the CPU. Returns (rank, world_size, device); (0, 1, None)
    without torchrun, and then nothing distributed happens."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, None
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return dist.get_rank(), dist.get_world_size(), device


def shard_frozen_base(model, device):
    """FSDP2 over the frozen base: each decoder layer, the embeddings, the LM head and the rest of
    the decoder (final norm) are units whose weights are split over the ranks and all-gathered one
    unit at a time, in forward and again in backward. The trainable tensors are left out
    (ignored_params): they stay whole on every rank and their gradients are summed as in ddp, so
    checkpoints and adapters are plain tensors. Layers move to `device` one at a time, so no rank
    ever holds the whole model there."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    trainable = {p for p in model.parameters() if p.requires_grad}
    decoder = model.model
    for layer in decoder.layers:
        fully_shard(layer.to(device), mesh=mesh, ignored_params=trainable)
    # a unit of its own, so the embedding matrix is whole only for the lookup, not the whole step
    fully_shard(decoder.embed_tokens.to(device), mesh=mesh, ignored_params=trainable)
    # answer_loss calls the LM head itself, not through model.forward: it is a root unit of its own
    fully_shard(model.lm_head.to(device), mesh=mesh, ignored_params=trainable)
    for name, child in decoder.named_children():
        if name != "layers":
            child.to(device)
    fully_shard(decoder, mesh=mesh, ignored_params=trainable)


def weight_bytes(model):
    """Bytes of parameters this process holds (a sharded tensor counts its local shard)."""
    from torch.distributed.tensor import DTensor
    return sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for p in model.parameters())


def all_reduce_step(params, total, stopping, device):
    """Sum the ranks' gradients and loss shares, and whether any rank was signalled, so every rank
    takes the same update and stops at the same step. A rank's share is its answer tokens' loss sum
    over the whole step's answer-token count, so the sums are the single-process gradient and loss.
    One all-reduce per tensor: the trainable set is a few tensors of a few MB."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    shared = torch.tensor([total, float(stopping)], dtype=torch.float64, device=device)
    dist.all_reduce(shared)
    return shared[0].item(), shared[1].item() > 0


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
    if removed and (not dist.is_initialized() or dist.get_rank() == 0):
        print(f"{len(removed)} of {len(features)} training prompts cut from the left to fit max_length "
              f"{cfg.max_length} with their answer (up to {cut['max_tokens_cut']} tokens, mean {cut['mean_tokens_cut']:.0f})")
    sources = dict(Counter(ex.get("source") or cfg.train_source or task.default_source for ex in examples))
    return features, cut, sources


def train(cfg: C.RunConfig, resume=False, overwrite=False):
    init_distributed()  # first: under torchrun rank 0 takes the lock and tells every rank whether it could
    with runlock.lock_run(cfg.run_dir):  # one writer per run folder; held until the last checkpoint is written
        return _train(cfg, resume, overwrite)


def _train(cfg: C.RunConfig, resume, overwrite):
    run_dir = cfg.run_dir
    if (run_dir / "adapter" / "adapter_config.json").is_file() and not overwrite:
        raise SystemExit(f"run {cfg.name!r} is already finished ({run_dir / 'adapter'}); "
                         f"pass --overwrite to train it again")
    ckpt = run_dir / "checkpoint"
    if (ckpt / "state.pt").is_file() and not (resume or overwrite):
        raise SystemExit(f"run {cfg.name!r} has a checkpoint at {ckpt}; pass --resume to continue it "
                         f"or --overwrite to start over")
    task = data.load_task(cfg.task)
    task.check_train_source(cfg.data_dir, cfg.train_source)  # e.g. Belebele's six-source file, before loading
    if cfg.eval_languages:  # a typo here should fail now, not after hours of training
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
    device = rank_device or device
    if rank == 0:
        print(models.dtype_message(cfg.dtype, device, dtype))
    # Full fine-tuning keeps fp32 master weights and computes in `dtype` under autocast: AdamW on bf16
    # weights rounds most updates away (at lr 1e-5, an update below 2^-8 of a weight is lost). Other
    # methods train fp32 tensors already (adapters create them in fp32) beside the frozen bf16 base.
    master_weights = cfg.method == "full" and dtype != torch.float32
    if master_weights and dtype == torch.float16:
        raise ValueError("method 'full' with dtype float16 would need loss scaling, which train.py does not do; "
                         "use --dtype bfloat16 (fp32 master weights, bf16 compute) or float32")
    torch.manual_seed(cfg.seed)
    # fsdp: the full model stays in host memory; shard_frozen_base moves it to the GPU one shard at a time
    model, tokenizer = models.load_model(cfg.model, dtype=torch.float32 if master_weights else dtype,
                                         device="cpu" if fsdp else device, trust_remote_code=cfg.trust_remote_code)
    autocast = torch.autocast(device.type, dtype=dtype) if master_weights else contextlib.nullcontext()
    adapters.attach(model, cfg.method, n_prefix_tokens=cfg.n_prefix_tokens, n_adapted_layers=cfg.n_adapted_layers,
                    lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, attn_backend=cfg.attn_backend, seed=cfg.seed)
    if cfg.gradient_checkpointing:
        adapters.set_gradient_checkpointing(model)
    n_trainable = adapters.count_trainable(model)
    if rank == 0:
        print(f"{cfg.name}: {cfg.method} on {cfg.model} ({device}, {dtype}"
              + (" compute, fp32 master weights" if master_weights else "") + f"), trainable params: {n_trainable:,}"
              + (f"; {world_size} processes ({cfg.parallel}), {cfg.batch_size // world_size} of each batch of "
                 f"{cfg.batch_size} per process" if world_size > 1 else ""))
    if cfg.method == "base":
        if rank == 0:
            print("method 'base' has nothing to train; run evaluate.py")
        return None
    if fsdp:
        shard_frozen_base(model, device)
        adapters.set_attn_backend(model, cfg.attn_backend)  # attach chose "auto"'s backend on the CPU
    features, train_truncation, train_sources = build_features(cfg, task, tokenizer)
    if rank == 0:
        print("training examples per source: " + ", ".join(f"{k} {v:,}" for k, v in train_sources.items()))
    steps_per_epoch = math.ceil(len(features) / (cfg.batch_size * cfg.grad_accum))
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_scheduler
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    # what fixes the batch of every step: a resumed run must match it exactly
    data_layout = dict(n_examples=len(features), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       seed=cfg.seed)
    step, log = 0, []
    if resume and (ckpt / "state.pt").is_file():
        step, log = load_checkpoint(model, optimizer, scheduler, ckpt, data_layout)  # every rank reads it
        if rank == 0:
            print(f"resumed from {ckpt} at step {step}/{total_steps}")
    if world_size > 1:
        for p in params:  # the ranks agree already (same seed, weights, checkpoint); this makes it certain
            dist.broadcast(p.data, src=0)
    if rank == 0:
        C.write_json_atomic(run_dir / "config.json", C.provenance(cfg))
    curves = Curves(cfg, rank, resume_step=step)

    stop = {"signal": None}
    def on_signal(signum, frame):  # finish the step in flight, save, exit: no lost work
        if stop["signal"] is not None:  # a second Ctrl-C: leave now; the last checkpoint stays whole
            raise SystemExit(f"stopped by a second signal {signum}; last checkpoint: {ckpt}")
        stop["signal"] = signum
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    model.train()
    micro = cfg.batch_size
    per_rank = micro // world_size
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.name}", disable=rank != 0)
    start = time.time()
    try:
        while step < total_steps:
            step_start = time.time()
            epoch, in_epoch = divmod(step, steps_per_epoch)
            batches = batch_order(len(features), micro, epoch, cfg.seed)
            group = batches[in_epoch * cfg.grad_accum:(in_epoch + 1) * cfg.grad_accum]
            n_tokens = sum(sum(l != -100 for l in features[i][1]) for b in group for i in b)
            n_all_tokens = sum(len(features[i][0]) for b in group for i in b)  # prompts and answers, no padding
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for b in group:
                # this rank's part of the batch; a rank left with nothing (the epoch's last, short batch) still
                # runs one example, weighted 0, because fsdp's all-gathers need every rank in every forward
                mine = b[rank * per_rank:(rank + 1) * per_rank]
                ids, mask, labels = (t.to(device) for t in collate([features[i] for i in mine or b[:1]],
                                                                  tokenizer.pad_token_id))
                with autocast:
                    loss = answer_loss(model, ids, mask, labels)
                # weight each micro-batch by its answer tokens over the whole step's (all ranks'): accumulation
                # and the ranks' summed gradients equal one big batch
                weight = (labels[:, 1:] != -100).sum().item() / n_tokens if mine else 0.0
                (loss * weight).backward()
                total += loss.item() * weight
            stopping = stop["signal"] is not None
            if world_size > 1:
                total, stopping = all_reduce_step(params, total, stopping, device)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            finite = math.isfinite(total) and math.isfinite(grad_norm)
            if not finite and not cfg.skip_nonfinite:
                raise SystemExit(f"non-finite loss ({total}) or gradient norm ({grad_norm}) at step {step + 1}; "
                                 f"last good checkpoint: {ckpt if (ckpt / 'state.pt').is_file() else 'none'} "
                                 f"(skip_nonfinite: true skips such steps instead)")
            if finite:
                optimizer.step()
            else:  # skip_nonfinite: drop this batch's update; the step still counts, so the data order
                # and the lr schedule do not shift, and a resumed run skips the same step
                if rank == 0:
                    tqdm.write(f"step {step + 1}: non-finite loss ({total}) or gradient norm ({grad_norm}); skipped")
            scheduler.step()
            step += 1
            log.append(dict(step=step, loss=total if finite else None, lr=scheduler.get_last_lr()[0],
                            grad_norm=grad_norm if finite else None, **({} if finite else dict(skipped=True)),
                            tokens_per_s=n_all_tokens / (time.time() - step_start)))
            curves.log({f"train/{k}": log[-1][k] for k in ("loss", "lr", "grad_norm", "tokens_per_s")}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
            if rank == 0 and (step % cfg.save_every == 0 or stopping):
                save_checkpoint(model, optimizer, scheduler, step, ckpt, log, data_layout)
            if stopping:
                if world_size > 1:
                    dist.barrier()  # no rank exits (and has torchrun stop rank 0) before the checkpoint is saved
                raise SystemExit(f"stopped by signal {stop['signal'] or '(to another rank)'} at step {step}; "
                                 f"checkpoint saved to {ckpt}; continue with --resume")
    finally:
        bar.close()
        curves.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    elapsed = time.time() - start
    if rank != 0:
        return run_dir / "adapter"
    save_checkpoint(model, optimizer, scheduler, step, ckpt, log, data_layout)
    provenance = C.provenance(cfg)
    base_model = models.MODELS[cfg.model].hub_id if cfg.model in models.MODELS else cfg.model
    # what the model card shows: the run's settings, what it learnt from, what ran it
    adapters.save_adapter(model, run_dir / "adapter", extra=dict(
        run=cfg.name, base_model=base_model, config=provenance["config"], train_sources=train_sources,
        versions=dict(provenance["versions"], xprefix_commit=provenance["git_commit"])))
    skipped = [entry["step"] for entry in log if entry.get("skipped")]
    summary = dict(provenance, steps=step, train_examples=len(features), trainable_params=n_trainable,
                   seconds=elapsed, final_loss=log[-1]["loss"] if log else None, n_skipped_steps=len(skipped),
                   skipped_steps=skipped, world_size=world_size, parallel=cfg.parallel if world_size > 1 else None,
                   weights_gib_per_rank=weight_bytes(model) / 2**30, log=log)
    summary.update(train_truncation=train_truncation, train_sources=train_sources)
    if device.type == "cuda":
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    C.write_json_atomic(run_dir / "train_log.json", summary)
    print(f"saved adapter to {run_dir / 'adapter'} after {step} steps in {elapsed:.0f}s"
          + (f"; {len(skipped)} non-finite step(s) skipped: {skipped}" if skipped else ""))
    if cfg.push_to_hub:  # last: a failed upload loses nothing (evaluate.py pushes again, with scores)
        share.push_adapter(run_dir / "adapter", cfg.push_to_hub)
        print(f"pushed {run_dir / 'adapter'} to the hub repo {cfg.push_to_hub}")
    return run_dir / "adapter"


def dry_run(cfg: C.RunConfig):
    """Build the model on the meta device and report the trainable parameter count."""
    print(C.to_json(cfg))
    model = models.meta_model(cfg.model)
    adapters.attach(model, cfg.method, n_prefix_tokens=cfg.n_prefix_tokens, n_adapted_layers=cfg.n_adapted_layers,
                    lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, attn_backend="torch")
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
