"""The collectives of a data-parallel trial, over a torch.distributed process group given by the caller.

A trial on N workers is the single-worker experiment divided up: each rank holds a contiguous
share of every global batch, of the classes and of the test set (:func:`shard_sizes`); the shares
are gathered with :func:`gather_rows`, after which every rank computes the same global loss, and
each parameter gradient is the sum over ranks of its own shares' contributions
(:func:`all_reduce_sum_`). Nothing here starts or knows the process group's launcher (Ray Train,
torch.multiprocessing): the group is initialised before, and ``group=None`` means the default one.
Works on gloo and NCCL alike: collectives run on ``comm_device`` (CUDA for NCCL, the CPU for gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows of rank 0..N-1 when ``n`` rows are split into contiguous shares, the first ``n % N``
    ranks taking one more."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous share of ``n`` rows (:func:`shard_sizes`)."""
    sizes = shard_sizes(n, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def comm_device(device: torch.device, group: dist.ProcessGroup | None = None) -> torch.device:
    """Where the group's collectives take their tensors: ``device`` under NCCL, the CPU otherwise."""
    return device if dist.get_backend(group) == "nccl" else torch.device("cpu")


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward keeps this rank's rows of the gradient.

    Every rank computes the same loss from the gathered tensor, so the gradient with respect to
    rank r's rows is already whole on rank r: no reduction in the backward (which would count it
    N times), only the slice. The prompt gradients are summed across ranks once, afterwards.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int, device: torch.device,
                group: dist.ProcessGroup | None) -> Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.rows = sizes[rank]
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]), device=device)  # (max rows, ...)
        padded[: x.shape[0]] = x.to(device)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(x.device)  # (sum(sizes), ...)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.start: ctx.start + ctx.rows], None, None, None, None


def gather_rows(x: Tensor, sizes: list[int], rank: int, device: torch.device,
                group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, rank r giving ``sizes[r]`` rows (sum(sizes), ...).

    Differentiable, for a loss that every rank computes identically from the result: the backward
    hands this rank the gradient of its own rows (see :class:`_GatherRows`). ``device`` is where the
    collective runs (:func:`comm_device`); the result is on ``x``'s device.
    """
    if x.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {x.shape[0]} rows, its share is {sizes[rank]}")
    return _GatherRows.apply(x, sizes, rank, device, group)


def all_reduce_sum_(tensors: list[Tensor], device: torch.device,
                    group: dist.ProcessGroup | None = None) -> None:
    """Sum each tensor across ranks in place, in one collective (flattened into one buffer)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(device) for t in tensors])  # (total elements,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()
