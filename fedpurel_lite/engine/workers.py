"""Running a round's clients concurrently on the CPU, with results identical to running them in turn.

The simulator's tensors are small, so one torch thread per client is fastest; a machine's other
cores are better used by training other clients of the same round at the same time. A
:class:`ClientPool` runs client steps on ``n`` Python threads (torch releases the GIL inside its
kernels), each thread borrowing its own *slot* -- private copies of the working modules -- so no
two clients ever share a trainable tensor. Every client step is a pure function of its inputs
(own batch generator, own module copy, one intra-op thread) and results are returned in the input
order, so the history does not depend on ``n`` (tested bit-for-bit).

The pool starts threads, never processes: they live inside the calling process and end with it,
however it ends (SIGKILL included), so nothing of a pool can outlive the run that made it.

Measured on this repository's 2-core machine: two CoOp clients at once take 1.25 s where two in
turn take 2.38 s.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity`` where available)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(os.cpu_count() or 1, 1)


def resolve_workers(workers: int, device: torch.device, concurrent_clients: bool) -> int:
    """Concurrent clients of a run: ``workers`` if set (> 0), else automatic.

    Automatic: one per available core on the CPU for a PEFT whose registry entry declares
    ``concurrent_clients`` (the prompt learner: a step runs ``C`` prompts through the text tower,
    1.9x with 2 workers on 2 cores); 1 for light PEFTs such as the head and the adapter, whose
    steps are microseconds of work where threads only add contention (``bench/bench_protocol.py``:
    12.2 s with 1 worker, 13.7 s with 2), and 1 on a GPU.
    """
    if workers:
        return int(workers)
    return available_cores() if device.type == "cpu" and concurrent_clients else 1


class IntraOpThreads:
    """Context manager setting torch's intra-op threads (restored on exit; ``None`` leaves them).

    The simulator works on small tensors, where one thread per client is fastest; with several
    threads on a busy machine every tiny op can cost milliseconds of spinning (measured: 8 ms vs
    23 us for a 64x100 log-softmax on 2 shared cores).
    """

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc: object) -> None:
        if self.n:
            torch.set_num_threads(self.old)


class ClientPool(Generic[S]):
    """Run per-client steps on ``n`` threads, each step borrowing one of ``n`` private slots.

    Parameters
    ----------
    n : int
        Threads and slots (1 runs the steps in turn on the calling thread).
    make_slot : callable
        Builds one slot (e.g. copies of the working modules); called ``n`` times.
    """

    def __init__(self, n: int, make_slot: Callable[[], S]) -> None:
        if n < 1:
            raise ValueError(f"a client pool needs at least one worker, got {n}")
        self.n = int(n)
        self._slots: queue.SimpleQueue[S] = queue.SimpleQueue()
        for _ in range(self.n):
            self._slots.put(make_slot())
        self._executor = ThreadPoolExecutor(self.n, thread_name_prefix="fedpurel-client") if self.n > 1 else None

    def map(self, fn: Callable[[S, T], R], items: Iterable[T]) -> list[R]:
        """``[fn(slot, item) for item in items]`` with the items spread over the threads (order kept).

        The first exception raised by a step is re-raised here.
        """

        def call(item: T) -> R:
            slot = self._slots.get()
            try:
                return fn(slot, item)
            finally:
                self._slots.put(slot)

        if self._executor is None:
            return [call(item) for item in items]
        return list(self._executor.map(call, items))

    def close(self) -> None:
        """Stop the threads (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> ClientPool[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
