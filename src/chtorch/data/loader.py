"""A minimal batch iterator for tensors that already sit in memory.

``torch.utils.data.DataLoader`` collates every batch from per-sample ``__getitem__`` calls, which
dominates the cost of an MLP epoch on MNIST-sized tensors. :class:`TensorLoader` instead draws one
permutation per epoch and gathers each batch with a single indexing op.

Shuffling uses a private generator derived from ``(seed, epoch)`` (``chtorch.rng``), so an epoch's
order depends only on the seed and the epoch number: a resumed run and every ``torchrun`` rank see
the same permutation, and :meth:`TensorLoader.shard` gives each rank a disjoint, equal-size slice of
it (the ``N mod world_size`` samples at the end of the permutation are left out of that epoch, so
no rank waits on a short shard).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from chtorch.rng import make_generator

__all__ = ["TensorLoader"]


class TensorLoader:
    """Iterate over batches of equally long tensors (e.g. ``images (N, ...)``, ``labels (N,)``).

    Args:
        *tensors: tensors sharing their first dimension ``N``; each batch is a tuple of slices.
        batch_size: samples per batch.
        shuffle: draw a new permutation each epoch (else the natural order).
        drop_last: drop the final batch when it is smaller than ``batch_size``.
        seed: seed of the per-epoch permutation.
        rank, world_size: this process's shard (see :meth:`shard`).

    Every ``iter()`` uses the current :attr:`epoch` and then advances it by one, so consecutive
    epochs are shuffled differently without bookkeeping; :meth:`set_epoch` sets it explicitly (for
    a resume). Batches live on the tensors' device.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        n = tensors[0].shape[0] if tensors[0].dim() else -1
        for i, t in enumerate(tensors):
            if t.dim() == 0 or t.shape[0] != n:
                shapes = [tuple(t.shape) for t in tensors]
                raise ValueError(f"all tensors must share their first dimension; got shapes {shapes} (tensor {i})")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(
                f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.tensors = tensors
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch: ``N // world_size`` (all ``N`` for one process)."""
        return self.tensors[0].shape[0] // self.world_size

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s permutation for the next iteration."""
        self.epoch = int(epoch)

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        """A loader over the same tensors that yields only shard ``rank`` of ``world_size``: for
        the same seed and epoch, the shards of all ranks are disjoint and of equal size."""
        other = TensorLoader(
            *self.tensors,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        other.epoch = self.epoch
        return other

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """int64 sample indices this rank visits in ``epoch`` (default: the next one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = self.tensors[0].shape[0]
        if self.shuffle:
            # The permutation depends on (seed, epoch) only, never on rank: ranks then cut it.
            order = torch.randperm(n, generator=make_generator(self.seed, "tensor-loader", epoch))
        else:
            order = torch.arange(n)
        m = self.num_samples
        return order[self.rank * m : (self.rank + 1) * m]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        index = self.indices()
        self.epoch += 1
        return self._batches(index)

    def _batches(self, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        contiguous = not self.shuffle and self.world_size == 1
        per_device = {t.device: index.to(t.device) for t in self.tensors}
        bs, m = self.batch_size, index.numel()
        stop = m - m % bs if self.drop_last else m
        for start in range(0, stop, bs):
            end = min(start + bs, m)
            if contiguous:
                # Natural order: plain views, no copy.
                yield tuple(t[start:end] for t in self.tensors)
            else:
                yield tuple(t.index_select(0, per_device[t.device][start:end]) for t in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        """The epoch to resume from (the data and options are the caller's to restore)."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
