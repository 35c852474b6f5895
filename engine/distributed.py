"""Several processes, on one machine or many, through PyTorch's own engine (`torch.distributed`, launched by torchrun).

    torchrun --standalone --nproc_per_node 4 train.py ...      # one node, 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint HOST:29500 --nproc_per_node 8 test.py ...

Plain `python train.py` runs one process and none of this is used. Under torchrun:

* training: `--batch_size` stays the global batch, split evenly between the ranks (the
  same batches as one process would draw, so the same model up to float rounding);
  gradients are averaged by DistributedDataParallel, each rank's loss weighted by its
  share of the batch, so a smaller last batch is exact too;
* evaluation: whole batches are dealt out to the ranks (each image on exactly one rank,
  none padded or counted twice), and their outputs gathered to rank 0, which computes
  the metrics and writes every output once;
* only rank 0 logs, shows progress bars and writes files;
* a run that ends well ends together: the other ranks wait (up to `FINISH_TIMEOUT`) while rank 0
  scores and writes, so that no rank closes its connections under one still using them (gloo
  aborts the process when a peer vanishes mid-connection).

NCCL is the backend on CUDA devices, gloo on CPUs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

# How long the other ranks wait for rank 0's metrics and writing at the end of a run (the collectives
# before that keep torch's default timeout, so that a hang is still reported).
FINISH_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()
_cpu_group = None  # a gloo group for CPU tensors when the main backend is NCCL
_finish_group = None  # a gloo group with FINISH_TIMEOUT, for the barrier that ends a run


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str | None):
    """(Context, device): initialise the process group when launched by torchrun, else one process."""
    from engine.devices import resolve_device

    if not launched():
        return SINGLE, resolve_device(device_name)
    import torch
    import torch.distributed as dist

    context = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is None or device_name in (None, "auto", "cuda"):
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if
                                device.type == "cuda" else None)
    global _cpu_group, _finish_group
    _cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
    _finish_group = dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)
    return context, device


def teardown(context: Context, finished: bool = True) -> None:
    """Close the process group; after a run that `finished`, only once every rank has got here."""
    global _cpu_group, _finish_group
    if context.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier(group=_finish_group)
            dist.destroy_process_group()
        _cpu_group = _finish_group = None


@contextlib.contextmanager
def session(device_name: str | None):
    """`with session(args.device) as (context, device):` setup, then teardown; a run that raised does not
    wait for the others (torchrun stops them when one rank fails)."""
    context, device = setup(device_name)
    try:
        yield context, device
    except BaseException:
        teardown(context, finished=False)
        raise
    teardown(context)


def _group_for(tensor):
    return _cpu_group if tensor.device.type == "cpu" and _cpu_group is not None else None


def check_batch(batch_size: int, context: Context) -> None:
    if context.enabled and batch_size % context.world_size:
        raise ValueError(f"--batch_size {batch_size} (the global batch) does not divide evenly between "
                         f"{context.world_size} processes: pass a multiple of {context.world_size}")


def share(batch: list[int], context: Context) -> list[int]:
    """This rank's rows of a global batch: contiguous, even (the last batch may leave a rank empty)."""
    if not context.enabled:
        return batch
    size = -(-len(batch) // context.world_size)
    return batch[context.rank * size:(context.rank + 1) * size]


def batches_of_rank(count: int, batch_size: int, context: Context) -> list[list[int]]:
    """Evaluation: whole batches of the dataset order, dealt out round-robin (each image on one rank)."""
    batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    return batches[context.rank::context.world_size]


def all_sum(tensor):
    """Sum over ranks, in place; nothing with one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, group=_group_for(tensor))
    return tensor


def gather_to_main(outputs: dict, context: Context, count: int, batch_size: int) -> dict | None:
    """Rank 0 gets every rank's `outputs` (tensors whose rows follow `batches_of_rank`) back in dataset
    order; other ranks get None. Padded to the longest shard for the transfer, the padding dropped."""
    if not context.enabled:
        return outputs
    import torch
    import torch.distributed as dist

    shards = [[i for batch in batches_of_rank(count, batch_size, Context(rank, context.world_size)) for i in batch]
              for rank in range(context.world_size)]
    longest = max(len(s) for s in shards)
    gathered = {}
    for key, local in outputs.items():
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[:len(local)] = local
        pieces = [torch.empty_like(padded) for _ in range(context.world_size)] if context.is_main else None
        dist.gather(padded, pieces, dst=0, group=_group_for(padded))
        if context.is_main:
            ordered = local.new_empty((count, *local.shape[1:]))
            for rank, rows in enumerate(shards):
                ordered[torch.tensor(rows, device=local.device, dtype=torch.long)] = pieces[rank][:len(rows)]
            gathered[key] = ordered
    return gathered if context.is_main else None


def gather_objects(value, context: Context) -> list | None:
    """Every rank's picklable `value`, in rank order, on rank 0 (None elsewhere); over gloo, off the GPUs."""
    if not context.enabled:
        return [value]
    import torch.distributed as dist

    pieces = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, pieces, dst=0, group=_cpu_group)
    return pieces


def broadcast_count(count: int, context: Context) -> int:
    """Rank 0's `count` on every rank (e.g. images processed, so that every rank exits alike)."""
    if not context.enabled:
        return count
    import torch.distributed as dist

    holder = [count]
    dist.broadcast_object_list(holder, src=0, group=_cpu_group)
    return holder[0]


def broadcast_parameters(module, context: Context) -> None:
    """Start every rank from rank 0's trainable weights (they agree anyway: same seed, same checkpoint)."""
    if not context.enabled:
        return
    import torch.distributed as dist

    for parameter in module.parameters():
        if parameter.requires_grad:
            dist.broadcast(parameter.data, src=0, group=_group_for(parameter.data))
