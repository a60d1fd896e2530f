"""The client pool: order kept, one step per slot at a time, errors surface; automatic worker counts."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from fedpurel_lite.engine.workers import ClientPool, IntraOpThreads, available_cores, resolve_workers
from fedpurel_lite.peft import PEFTS


def test_map_keeps_order_and_never_shares_a_slot():
    made = []
    busy: set[int] = set()
    lock = threading.Lock()
    clash = []

    def make_slot():
        made.append(len(made))
        return made[-1]

    def step(slot, item):
        with lock:
            clash.append(slot in busy)
            busy.add(slot)
        time.sleep(0.002 * (item % 3))  # uneven work so threads finish out of order
        with lock:
            busy.discard(slot)
        return item * item, threading.get_ident()

    with ClientPool(3, make_slot) as pool:
        out = pool.map(step, range(12))
    assert made == [0, 1, 2]
    assert [v for v, _ in out] == [i * i for i in range(12)]
    assert not any(clash)
    assert len({t for _, t in out}) > 1  # really ran on several threads


def test_single_worker_runs_on_the_calling_thread_and_errors_surface():
    pool = ClientPool(1, lambda: "slot")
    assert pool.map(lambda s, i: (s, threading.get_ident()), [0]) == [("slot", threading.get_ident())]

    def boom(slot, item):
        if item == 2:
            raise RuntimeError("client 2 failed")
        return item

    for n in (1, 2):
        with ClientPool(n, lambda: None) as p, pytest.raises(RuntimeError, match="client 2 failed"):
            p.map(boom, range(4))
    with pytest.raises(ValueError, match="at least one worker"):
        ClientPool(0, lambda: None)


def test_resolve_workers():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    light, heavy = (PEFTS.get(k).concurrent_clients for k in ("head", "prompt"))
    assert not light and not PEFTS.get("adapter").concurrent_clients and heavy
    assert resolve_workers(3, cpu, light) == 3
    assert resolve_workers(0, cpu, light) == 1
    assert resolve_workers(0, cpu, heavy) == available_cores() and resolve_workers(0, gpu, heavy) == 1


def test_intra_op_threads_restores():
    old = torch.get_num_threads()
    with IntraOpThreads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old


def test_a_pool_starts_no_process_that_could_outlive_the_run():
    """Threads only: nothing below this process appears while a pool works (a process pool would show)."""
    import os

    from fedpurel_lite.flower.procs import descendants

    before = {p.pid for p in descendants(os.getpid())}
    with ClientPool(2, lambda: None) as pool:
        seen = pool.map(lambda slot, item: {p.pid for p in descendants(os.getpid())} - before, range(4))
    assert seen == [set()] * 4
