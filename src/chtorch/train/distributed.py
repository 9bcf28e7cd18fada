"""``torchrun`` support for the trainer: the process group, the device of each rank, rank-0 helpers.

``torchrun --nproc_per_node N -m chtorch.cli train CONFIG`` starts N copies of the command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_distributed` reads them and joins the process group — gloo on CPU, nccl on CUDA (each
process takes the GPU of its ``LOCAL_RANK``). Without them, or with ``WORLD_SIZE=1``, everything here
is a no-op and a run is the plain single-process run.

What the trainer does with it (see :class:`~chtorch.train.trainer.Trainer`): the model is wrapped in
``DistributedDataParallel`` (gradients averaged over ranks every step), each rank trains on its own
shard of the data, the sparsity engine averages the dense gradients it ranks candidates by and
broadcasts the masks from rank 0 after each topology update with a checksum check
(:mod:`chtorch.dst.ranks`; its random choices come from counter-based generators, so ranks agree by
construction), and only rank 0 writes the run directory. Decisions that one rank could take alone —
stop after Ctrl-C, skip a step whose loss is NaN — are agreed with a one-element all-reduce, so no
rank waits forever in a collective that another rank skipped.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from chtorch.config import ConfigError

__all__ = [
    "DistributedContext",
    "DistributedError",
    "init_distributed",
    "shutdown",
    "current",
    "env_rank",
    "env_world_size",
    "resolve_device",
    "wrap_model",
]

T = TypeVar("T")


class DistributedError(ConfigError):
    """The ``torchrun`` environment or the process group is unusable (a launch mistake)."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(
            f"environment variable {name}={text!r} is not an integer; start the run with torchrun "
            "(which sets RANK, LOCAL_RANK and WORLD_SIZE) or unset it"
        ) from None


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when absent)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` as ``torchrun`` sets it (0 when absent): usable before the process group exists,
    e.g. to keep the command's banner on rank 0."""
    return _env_int("RANK", 0)


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process for ``run.device=name``.

    ``auto`` is CUDA when available, else CPU. Under ``torchrun`` (``world_size > 1``) ``auto`` and
    ``cuda`` mean ``cuda:LOCAL_RANK`` — one GPU per process — and an explicit ``cuda:N`` is refused,
    since every process would then share one GPU (which nccl does not allow).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device={name!r} is not a device; use auto, cpu, cuda or cuda:N", "run.device") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available; use run.device=cpu or auto", "run.device")
    if world_size > 1:
        if device.index is not None:
            raise ConfigError(
                f"run.device={name!r} names one GPU, but torchrun started {world_size} processes: use run.device=cuda "
                "(or auto), and each process takes the GPU of its LOCAL_RANK",
                "run.device",
            )
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s): start at most that many "
                "processes per node (torchrun --nproc_per_node), or train on CPU with run.device=cpu"
            )
        device = torch.device("cuda", local_rank)
    return device


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and its device.

    ``owns_group`` is True when :func:`init_distributed` created the process group (and
    :func:`shutdown` therefore destroys it); a group the caller initialised is left alone.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True when several processes train together (the model is wrapped in DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    # -- collectives (each is a no-op for one process; under DDP every rank must call it) --------
    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_equal(self, value: int) -> bool:
        """True when every rank passes the same integer."""
        if not self.enabled:
            return True
        t = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) == value and int(t[1]) == -value

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a picklable value)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the other ranks)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, values: dict[str, Any]) -> dict[str, float]:
        """Key-wise sum over ranks of a dict of numbers (every rank must hold the same keys)."""
        keys = sorted(values)
        if not self.enabled or not keys:
            return {k: float(values[k]) for k in keys}
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, (float(v) for v in t.tolist())))


_CONTEXT: DistributedContext | None = None


def current() -> DistributedContext:
    """The context set by :func:`init_distributed` (a single-process context before it runs)."""
    return _CONTEXT if _CONTEXT is not None else DistributedContext()


#: How long a rank waits in a collective. Rank 0 evaluates (BLEU decoding can take minutes) and writes
#: plots while the others wait at the next collective, so this is longer than nccl's 10-minute default.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def init_distributed(device: str = "auto", timeout: timedelta | None = DEFAULT_TIMEOUT) -> DistributedContext:
    """Join the ``torchrun`` process group if this process was started by it; idempotent.

    Args:
        device: ``run.device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); it picks the backend —
            nccl for CUDA, gloo for CPU.
        timeout: collective timeout (PyTorch's default when None).

    Returns the :class:`DistributedContext`. A process group that the caller created already is
    reused (its rank and size win over the environment).
    """
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
        owns = _CONTEXT.owns_group if _CONTEXT is not None else False
        dev = resolve_device(device, local, world)
        _CONTEXT = DistributedContext(rank, world, local, dev, dist.get_backend(), owns)
        return _CONTEXT
    world = env_world_size()
    rank, local = env_rank(), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        _CONTEXT = DistributedContext(device=resolve_device(device))
        return _CONTEXT
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise DistributedError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}; start the run with torchrun")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(
                f"WORLD_SIZE={world} but {name} is not set: start the run with torchrun "
                "(e.g. torchrun --standalone --nproc_per_node 2 -m chtorch.cli train CONFIG)"
            )
    dev = resolve_device(device, local, world)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not join the torchrun process group ({backend}): {exc}") from None
    _CONTEXT = DistributedContext(rank, world, local, dev, backend, owns_group=True)
    return _CONTEXT


def shutdown() -> None:
    """Destroy the process group if :func:`init_distributed` created it (end of the command)."""
    global _CONTEXT
    ctx = _CONTEXT
    _CONTEXT = None
    if ctx is not None and ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``DistributedDataParallel(model)`` under ``torchrun``, else ``model`` itself.

    Buffers are synchronised once, when the wrapper is built, but not re-broadcast before every
    forward: the only buffers the trainer's models carry are the sparsity masks (and non-persistent
    rotary tables), and the engine keeps the masks identical itself — rank-0 broadcast plus checksum
    after every topology update.
    """
    if not ctx.enabled:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # torch >= 2.13 names the option forward_sync_buffers (broadcast_buffers warns there).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_forward_sync: dict[str, Any] = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(model, device_ids=device_ids, **no_forward_sync)
