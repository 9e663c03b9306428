"""Run a function on two gloo processes and compare what rank 0 got with one process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, store: str, out: str, fn: Callable[..., Any], args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        found = fn(*args)
        if rank == 0:
            torch.save(found, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def assert_two_processes_equal_one(
    fn: Callable[..., dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    distributed_args: tuple = (), single_args: tuple = (),
) -> None:
    """``fn(*distributed_args)`` on 2 processes (rank 0's tensors) equals ``fn(*single_args)`` on this one.

    ``fn`` is a module-level function returning a dict of tensors with a ``world_size`` entry.
    """
    store, out = tmp_path / "store", tmp_path / "rank0.pt"
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(store), str(out), fn, distributed_args), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    single = fn(*single_args)
    assert int(distributed.pop("world_size")) == 2 and int(single.pop("world_size")) == 1
    assert set(distributed) == set(single)
    for key, value in single.items():
        assert torch.equal(distributed[key], value), key
