"""Data parallelism across the processes that ``accelerate launch`` starts (no process management here).

Under ``accelerate launch --num_processes N -m interp <stage> ...`` every process runs the same stage on
the same inputs and splits only the heavy loops:

- ``split(items)`` gives a process every N-th item, from its rank on (``items[rank::N]``), and
  ``gather(local, n)`` puts the processes' results back in the items' order, on every process;
- ``collect(local)`` gives every process all processes' lists;
- ``all_sum(tensor)`` adds a tensor over the processes, in place (the restoration's gradients and token
  counts, on the model's device); ``sum_array(values)`` adds a NumPy array (the sweeps' sums).

After every gather all processes hold the same results, so they take the same branches: caches hit or
miss alike, because only the main process writes (``interp.io``: every atomic write is the main process's
and ends at a barrier all processes reach), so no process reads a file while another writes it. A
process that dies ends the launch (``torchrun`` stops the others); since every write is a temporary
name renamed into place, nothing half written is left behind.

With FSDP (``accelerate launch --use_fsdp --fsdp_version 2``, or an accelerate config whose
``distributed_type`` is ``FSDP``), ``sharded()`` is true and ``shard(model, blocks)`` spreads a trained
model's weights over the processes (torch's FSDP2 ``fully_shard`` on every block, with the launch's
``reshard_after_forward`` and CPU offload settings): each process keeps 1/N of every block between uses,
and the block's gradients are summed over the processes as they are computed (reduce-scatter with
divide factor 1: every process's loss is its rows' share of the batch loss, as without FSDP).

**Leaving.** A launched process ends with ``leave(code)``: after a successful stage all processes meet at
a barrier (no collective is then pending anywhere), flush their output and exit at once (``os._exit``),
without interpreter finalization. Left to finalization, gloo's and FSDP's C++ threads are torn down in
whatever order the interpreter frees them, and on a loaded machine a process aborted there about once in
14 runs with "terminate called without an active exception" after all its work was done
(pytorch/pytorch#190489 and #179291). ``interp`` leaves this way; a script of one's own under
``accelerate launch`` ends with ``distributed.leave(0)``. A process whose stage failed leaves at once,
without the barrier (the others may never reach it; ``torchrun`` stops them).

On one process (a plain ``interp`` call) every function is the identity, and accelerate is not imported.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from functools import cache
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several (``WORLD_SIZE`` > 1, as ``accelerate launch`` sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@cache
def _state():
    """accelerate's ``PartialState`` (it starts the process group: NCCL on GPUs, gloo on CPUs), with the
    group destroyed at exit (``_close``)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    atexit.register(_close)
    return state


def _close() -> None:
    """Destroy the process group while the interpreter is still whole. Left to interpreter finalization,
    gloo's worker threads can still hold work with tensors in it, and a process that finishes first (a
    loaded machine makes that likely) aborts with "terminate called without an active exception"
    (pytorch/pytorch#190489 and #179291)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int = 0) -> None:
    """End this process with exit code ``code`` (module docstring, "Leaving"); on one process, return."""
    if not launched():
        return
    import sys

    if code == 0:
        barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def world() -> int:
    return _state().num_processes if launched() else 1


def rank() -> int:
    return _state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def sharded() -> bool:
    """Whether the launch asked for FSDP (accelerate sets ``ACCELERATE_USE_FSDP``)."""
    return launched() and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


@cache
def fsdp_settings():
    """``(reshard_after_forward, offload_policy)`` of the FSDP launch (accelerate's plugin reads them from
    the launch's environment); a ``ConfigError`` unless it asks for FSDP2."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    version = os.environ.get("FSDP_VERSION", "1")  # accelerate's default is FSDP1
    if version != "2":
        raise ConfigError(f"interp shards with FSDP2: launch with --fsdp_version 2 (this launch asks for {version})")
    try:
        plugin = FullyShardedDataParallelPlugin()
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"the FSDP launch's settings: {error}") from None
    return plugin.reshard_after_forward, plugin.cpu_offload


def shard(model, blocks) -> None:
    """FSDP2 on each of ``blocks`` (``model``'s decoder layers), in place (module docstring). The rest of
    the model (embeddings, final norm, unembedding) stays whole on every process: it is not trained."""
    from torch.distributed.fsdp import fully_shard

    reshard, offload = fsdp_settings()
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard, offload_policy=offload)
        block.set_gradient_divide_factor(1.0)  # a sum, not a mean
        block.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum


def device(requested: str) -> str:
    """The device of this process: ``cuda`` means this process's own GPU (its local rank) when launched."""
    if launched() and requested == "cuda":
        return f"cuda:{_state().local_process_index}"
    return requested


def split(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world()``-th item from its rank on."""
    return list(items)[rank() :: world()]


def collect(local: Sequence[T]) -> list[list[T]]:
    """Every process's ``local`` list, by rank, on every process."""
    if not launched():
        return [list(local)]
    import torch.distributed as dist

    parts: list = [None] * world()
    dist.all_gather_object(parts, list(local))
    return parts


def gather(local: Sequence[T], n: int) -> list[T]:
    """The ``split`` shares of all processes, back in the original order of the ``n`` items."""
    out: list = [None] * n
    for r, part in enumerate(collect(local)):
        out[r :: world()] = part
    return out


def all_sum(tensor):
    """``tensor`` summed over the processes, in place (returned for chaining)."""
    if launched():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_array(values):
    """A NumPy array summed over the processes, as a new array (on this process's device in transit)."""
    if not launched():
        return values
    import torch

    return all_sum(torch.as_tensor(values, device=_state().device)).cpu().numpy()


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()
