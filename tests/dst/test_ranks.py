"""Two-process DDP on CPU (gloo): every rank must hold the same masks and weights."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import chtorch
from chtorch.dst.ranks import MaskDivergenceError, sync_masks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _init(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _train_worker(rank: int, world: int, init_file: str, method: str, out_dir: str) -> None:
    _init(rank, world, init_file)
    try:
        torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
        model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sp = chtorch.sparsify(
            model,
            opt,
            method=method,
            sparsity=0.8,
            total_steps=30,
            update_interval=5,
            seed=7,
            option_defaults={"grad_accumulation": 2},
        )
        ddp = DDP(model)
        updates = 0
        for step in range(30):
            g = torch.Generator().manual_seed(1000 * step + rank)  # each rank sees its own shard
            x = torch.randn(16, 12, generator=g)
            y = torch.randint(0, 3, (16,), generator=g)
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
            updates += sp.step() is not None
            opt.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save({"state": state, "updates": updates}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _divergence_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    _init(rank, world, init_file)
    try:
        mask = torch.zeros(4, 4, dtype=torch.bool)
        mask[rank, rank] = True  # ranks disagree
        try:
            sync_masks([mask])
            outcome = "no error"
        except MaskDivergenceError as err:
            outcome = f"error: {err}"
        same = torch.zeros(3, 3, dtype=torch.bool)
        same[1, 2] = True
        sync_masks([same])  # agreeing ranks pass and keep their masks
        torch.save({"outcome": outcome, "same": same}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(fn, args, tmp_path) -> None:
    init_file = str(tmp_path / "init")
    mp.spawn(fn, args=(2, init_file, *args), nprocs=2, join=True)


@pytest.mark.parametrize("method", ["chts", "rigl"])
def test_ddp_ranks_hold_identical_masks_and_weights(method, tmp_path):
    _spawn(_train_worker, (method, str(tmp_path)), tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["updates"] == r1["updates"] == 4  # every 5 steps until T_end = 0.75 * 30
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    masks = [k for k in r0["state"] if k.endswith("weight_mask")]
    assert masks == ["0.weight_mask", "2.weight_mask"]


def test_mask_checksum_detects_divergent_ranks(tmp_path):
    _spawn(_divergence_worker, (str(tmp_path),), tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["outcome"].startswith("error: ranks hold different masks")
        assert result["same"].sum() == 1 and result["same"][1, 2]


def _fsdp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    _init(rank, world, init_file)
    try:
        from torch.distributed.fsdp import fully_shard

        outcomes = []
        for order in ("shard_first", "sparsify_first"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
            try:
                if order == "shard_first":
                    fully_shard(model)
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
                    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.8, total_steps=10)
                else:
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
                    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.8, total_steps=10)
                    fully_shard(model)
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
                    sp.optimizer = opt
                    opt.register_step_post_hook(sp._after_optimizer_step)
                    model(torch.randn(4, 12)).sum().backward()
                    opt.step()
                outcomes.append("no error")
            except NotImplementedError as err:
                outcomes.append(str(err))
        torch.save(outcomes, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp_is_refused_with_a_clear_error(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    _spawn(_fsdp_worker, (str(tmp_path),), tmp_path)
    for rank in range(2):
        outcomes = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(outcomes) == 2
        assert all("FSDP" in o and "DistributedDataParallel" in o for o in outcomes), outcomes
