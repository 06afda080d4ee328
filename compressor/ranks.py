"""The processes of a torchrun launch: who they are, and how they agree.

``torchrun --nproc-per-node N -m compressor ...`` starts N copies of the program,
told apart by the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address). Rank 0 runs the whole pipeline; the other ranks only train
the nested family with it (`follower`). Without torchrun (no WORLD_SIZE, or a
world of one) there are no ranks, and nothing here runs.

Rank 0's decisions reach the others by `Ranks.broadcast` over the CPU (gloo), also
when the family trains on GPUs (NCCL carries only the gradients there).
"""
from __future__ import annotations

import contextlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .errors import EXIT_INTERNAL, CompressorError

__all__ = ["RankLostError", "Ranks", "from_env", "peers_watched", "process_group"]

# Collectives wait this long for a peer. The other ranks wait in one broadcast while rank 0
# measures the teacher, searches, and later exports, which can take hours; a rank that dies is
# torchrun's to notice (it stops every rank when one fails), not this timeout's.
_PEER_WAIT = timedelta(days=7)
_POLL_S = 0.05


class RankLostError(CompressorError):
    """Another rank of the launch stopped (killed, crashed, out of memory) while this one needed it."""

    exit_code = EXIT_INTERNAL


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int  # which GPU of this machine the rank takes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; the others pass anything, e.g. None).

        A rank waits for rank 0 in a loop of short sleeps rather than inside the collective, so
        Ctrl-C and torchrun's SIGTERM stop it at once instead of after torchrun's kill timeout."""
        ready = dist.broadcast(torch.zeros(1), src=0, async_op=True)
        while not ready.is_completed():
            time.sleep(_POLL_S)
        ready.wait()  # raises where rank 0 is gone
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def from_env() -> Ranks | None:
    """The ranks torchrun describes in this process's environment; None outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Ranks(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def peers_watched(ranks: Ranks) -> Iterator[None]:
    """A collective failing because another rank is gone, said in one line with what to do. Gloo and
    NCCL say it in their own words, and from inside a backward pass as a plain RuntimeError."""
    try:
        yield
    except CompressorError:
        raise
    except Exception as e:
        text = str(e)
        if not (isinstance(e, dist.DistError) or "gloo" in text or "NCCL" in text):
            raise
        raise RankLostError(f"rank {ranks.rank}: another rank of this torchrun launch stopped (torchrun's failure "
                            "report names it); the run folder keeps every finished epoch: run the same torchrun "
                            "command again with --resume") from e


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[Ranks]:
    """Join the launch's process group for the duration: gloo for CPU training, NCCL for the
    gradients of GPU training with gloo beside it for everything else."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=_PEER_WAIT, rank=ranks.rank, world_size=ranks.world_size)
    finished = False
    try:
        yield ranks
        finished = True
    finally:
        if finished:
            # every rank at the end before any tears its connections down: a rank that left while
            # another's last collective was still in flight aborted that one at exit, rarely (one
            # resumed 2-rank run in 26 in tests/test_distill_ddp.py)
            with contextlib.suppress(Exception):  # a peer gone by now changes nothing: the run is over
                dist.barrier()
        dist.destroy_process_group()
