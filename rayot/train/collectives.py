"""What the ranks of one trial share: the collectives, and agreement on failures.

A trial on N ranks is the single-worker experiment divided up (:mod:`rayot.distributed`): each
rank takes its slice of every global batch, its share of the classes and of the test set;
:meth:`TrialHooks.gather` puts the shares together, every rank computes the same global loss, and
:meth:`TrialHooks.sum_gradients` adds up the ranks' contributions to the prompt gradients, once.

A failure on one rank (bad data, a non-finite loss) must stop that trial on every rank instead of
leaving the others blocked in the next collective: every rank asks :meth:`TrialHooks.first_failed_ranks`
at the same points of its loop (:func:`agree`, :func:`agreed_failures`). The Ray layer adds
checkpoint storage to :class:`DistributedHooks`; this module knows nothing about Ray.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rayot import distributed
from rayot.errors import RayotError, TrainingError


class TrialHooks:
    """One process: no collectives. :class:`DistributedHooks` is the N-rank version, the Ray layer
    adds checkpoint storage to it."""

    rank: int = 0
    world_size: int = 1

    def gather(self, x: Tensor, sizes: list[int]) -> Tensor:
        """Every rank's ``x`` concatenated along dim 0 (rank r gives ``sizes[r]`` rows), with
        gradients flowing back to the rank that gave the rows; ``x`` itself on one process."""
        return x

    def sum_gradients(self, params: list[nn.Parameter]) -> None:
        """Sum the parameters' gradients across ranks (after the backward, before the step)."""

    def sum_tensors(self, tensors: list[Tensor | None], like: list[Tensor]) -> list[Tensor]:
        """Each tensor summed across ranks; ``None`` counts as zeros shaped like ``like``."""
        return [t if t is not None else p.new_zeros(p.shape) for t, p in zip(tensors, like, strict=True)]

    def sum_count(self, n: int) -> int:
        """An integer summed across ranks (the correct counts of the test shares)."""
        return n

    def resume_state(self) -> dict[str, Any] | None:
        """The last epoch checkpoint of an interrupted run of this trial, if any."""
        return None

    def save_epoch(self, epoch: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Called on every rank after each epoch with the resumable training state."""

    def early_stop(self, epoch: int, histories: dict[str, list[dict[str, float]]]) -> set[str]:
        """After each epoch (0-based ``epoch``) of search trials (``histories``: every epoch's
        metrics so far by trial id, validation scores included): the trials that their search's
        scheduler stops now. Every rank calls it with the same metrics and must get the same
        answer. None here."""
        return set()

    def first_failed_rank(self, failed: bool) -> int | None:
        """Agree across ranks on a failure: the lowest rank that failed, or ``None``.

        Every rank calls it at the same points of the loop; over N ranks it is a collective, so a
        failure on one rank stops them all instead of leaving them blocked in the next one.
        """
        return self.rank if failed else None

    def first_failed_ranks(self, failed: list[bool]) -> list[int | None]:
        """:meth:`first_failed_rank` for each member of a pack (one collective over N ranks)."""
        return [self.first_failed_rank(f) for f in failed]

    def sum_counts(self, counts: list[int]) -> list[int]:
        """:meth:`sum_count` for each member of a pack (one collective over N ranks)."""
        return [self.sum_count(n) for n in counts]


class DistributedHooks(TrialHooks):
    """The collectives over an initialised torch.distributed process group (gloo or NCCL).

    ``device`` is the rank's training device; ``group`` the process group (``None``: the default).
    With one rank every method is the single-process one.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device,
                 group: dist.ProcessGroup | None = None) -> None:
        self.rank, self.world_size, self.device, self.group = rank, world_size, device, group

    @property
    def comm_device(self) -> torch.device:
        return distributed.comm_device(self.device, self.group)

    def gather(self, x: Tensor, sizes: list[int]) -> Tensor:
        if self.world_size == 1:
            return x
        return distributed.gather_rows(x, sizes, self.rank, self.comm_device, self.group)

    def sum_gradients(self, params: list[nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else p.new_zeros(p.shape) for p in params]
        distributed.all_reduce_sum_(grads, self.comm_device, self.group)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def sum_tensors(self, tensors: list[Tensor | None], like: list[Tensor]) -> list[Tensor]:
        out = super().sum_tensors(tensors, like)
        if self.world_size > 1:
            distributed.all_reduce_sum_(out, self.comm_device, self.group)
        return out

    def sum_count(self, n: int) -> int:
        return self.sum_counts([n])[0]

    def sum_counts(self, counts: list[int]) -> list[int]:
        if self.world_size == 1:
            return list(counts)
        total = torch.tensor(counts, dtype=torch.long, device=self.comm_device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return [int(n) for n in total.tolist()]

    def first_failed_rank(self, failed: bool) -> int | None:
        return self.first_failed_ranks([failed])[0]

    def first_failed_ranks(self, failed: list[bool]) -> list[int | None]:
        if self.world_size == 1:
            return [self.rank if f else None for f in failed]
        flags = torch.tensor([self.rank if f else self.world_size for f in failed], device=self.comm_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=self.group)
        return [None if first == self.world_size else first for first in flags.tolist()]


class PeerFailure(TrainingError):
    """Another rank of this trial failed; that rank records the failure, this one only stops."""


def agree(hooks: TrialHooks, error: RayotError | None) -> None:
    """Raise on every rank when any rank failed: its own error where it failed, else PeerFailure."""
    failed = hooks.first_failed_rank(error is not None)
    if failed is None:
        return
    if error is not None and failed == hooks.rank:
        raise error
    raise PeerFailure(f"rank {failed} of this trial failed")


def agreed_failures(hooks: TrialHooks, n: int, errors: dict[int, RayotError]) -> dict[int, RayotError]:
    """Agree across ranks on which of ``n`` members failed (``errors``: this rank's, by member):
    each failed member's error where it failed, :class:`PeerFailure` on the other ranks. Every rank
    calls it at the same points; one process asks only when something failed."""
    if n == 0 or (not errors and hooks.world_size == 1):
        return {}
    firsts = hooks.first_failed_ranks([i in errors for i in range(n)])
    return {i: (errors.get(i) if first == hooks.rank else None) or PeerFailure(f"rank {first} of this trial failed")
            for i, first in enumerate(firsts) if first is not None}
