"""torchrun's processes, for train.py and evaluate.py: the process group, the frozen base sharded
with FSDP2, one all-reduce per training step, and evaluation batches dealt out to the ranks,
halved on running out of GPU memory and gathered again.

Without torchrun every helper is the single-process case: one rank, all the batches, nothing to
reduce or gather.
"""
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm


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


def is_rank0():
    """Whether this process writes and prints: the only one, or torchrun's rank 0."""
    return not dist.is_initialized() or dist.get_rank() == 0


# ---- training -------------------------------------------------------------------------------------

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


def all_reduce_step(params, loss, stopping, device):
    """Sum the ranks' gradients and loss shares, and whether any rank was signalled, so every rank
    takes the same update and stops at the same step. A rank's share is its answer tokens' loss sum
    over the whole step's answer-token count, so the sums are the single-process gradient and loss.
    One all-reduce per tensor: the trainable set is a few tensors of a few MB."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    shared = torch.tensor([loss, float(stopping)], dtype=torch.float64, device=device)
    dist.all_reduce(shared)
    return shared[0].item(), shared[1].item() > 0


# ---- evaluation -----------------------------------------------------------------------------------

def my_batches(order, batch_size):
    """The batches of `order` that this process computes: all of them, or under torchrun every
    world_size-th one. Each batch is the one a single process forms, so its results are too."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[dist.get_rank()::dist.get_world_size()] if dist.is_initialized() else batches


def gather(values):
    """Under torchrun, every rank's results merged: each rank's list holds None where another rank
    computed the entry. Without torchrun, `values` as they are."""
    if not dist.is_initialized():
        return values
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [next((v for v in entries if v is not None), None) for entries in zip(*parts)]


def _halve_on_oom(batch_size, n_in_batch):
    """The batch size to retry with after running out of GPU memory on `n_in_batch` rows."""
    if n_in_batch <= 1:
        raise SystemExit("out of GPU memory with a batch of 1; use a smaller max_length or a larger GPU")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tqdm.write(f"out of GPU memory with a batch of {n_in_batch}; continuing with {n_in_batch // 2}")
    return n_in_batch // 2


def map_batches(compute, order, batch_size):
    """compute(batch) over this process's batches of `order` (my_batches), halving the batch size
    after running out of GPU memory; returns the result of every index, gathered from all ranks.

    Args:
        compute: takes a list of indices, returns one result (not None) per index.
        order: a permutation of range(n): the order in which indices are batched.
    Returns a list of n results, the i-th computed for index i.
    """
    results = [None] * len(order)
    batches = my_batches(order, batch_size)
    # within a language: an XQuAD language is minutes of CPU work; leave=False clears it when done
    bar = tqdm(total=sum(map(len, batches)), unit="ex", leave=False, disable=not is_rank0() or len(batches) < 2)
    while batches:
        try:
            out = compute(batches[0])
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
            out = None
        if out is None:  # retry outside the except block, so the failed batch's tensors are freed first
            batch_size = _halve_on_oom(batch_size, len(batches[0]))
            batches = [b[i:i + batch_size] for b in batches for i in range(0, len(b), batch_size)]
            continue
        done = batches.pop(0)
        for index, result in zip(done, out):
            results[index] = result
        bar.update(len(done))
    bar.close()
    return gather(results)
