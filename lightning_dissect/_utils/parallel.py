"""Coarse-grained CPU parallelism for the statistics: a few large tasks, no barrier per operation.

The statistics (upsampling, histogram keys, level lookups, ``bincount``) are a dozen short
operations per million values. Letting torch split each of them over its thread pool puts a
barrier after every one, and on a machine whose cores are shared the threads that finish first
wait for one that was descheduled: many times slower than one thread. Here instead each task is a
whole unit group (all of its operations), run with torch on one thread inside the task, and the
tasks are handed to a small pool of worker threads in order: a worker that falls behind delays
only the group it holds, and the others take the remaining groups. torch releases the GIL inside
its operations, so the workers run in parallel. Every task writes its own slice of the output,
so the counts are the same integers whatever the number of threads.

The number of workers is torch's thread count (``torch.get_num_threads()``) unless a caller caps
it with :func:`statistics_threads`. The short operations between the tasks (preparing a batch's
labels, adding its counts into the states) run on the caller's thread, with torch on one thread
inside :func:`one_thread`, for the same reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

__all__ = ["one_thread", "release_freed_memory", "statistics_threads", "worker_count", "run_tasks", "run_side_by_side"]

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools_in_child() -> None:
    """A forked child has none of the parent's worker threads: it starts its own pools."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)
_local = threading.local()
_cap: list[int | None] = [None]


@contextmanager
def statistics_threads(threads: int | None) -> Iterator[None]:
    """Cap the worker threads of the statistics inside the block (``None``: no cap).

    Examples:
        >>> with statistics_threads(1):
        ...     worker_count(torch.device("cpu"))
        1
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be a positive int or None, got {threads!r}")
    before = _cap[0]
    _cap[0] = threads
    try:
        yield
    finally:
        _cap[0] = before


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread in the block; :func:`worker_count` still counts the threads it had before.

    For the short operations between parallel tasks (see the module docs).

    Examples:
        >>> threads = torch.get_num_threads()
        >>> with one_thread():
        ...     inside = torch.get_num_threads(), worker_count(torch.device("cpu"))
        >>> inside == (1, threads), torch.get_num_threads() == threads
        (True, True)
    """
    before = torch.get_num_threads()
    saved = getattr(_local, "threads", None)
    _local.threads = saved or before
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _local.threads = saved


def worker_count(device: torch.device) -> int:
    """Workers for the statistics on ``device``: torch's thread count (capped), 1 off the CPU or inside a task."""
    if device.type != "cpu" or getattr(_local, "inside", False):
        return 1
    threads = getattr(_local, "threads", None) or torch.get_num_threads()
    cap = _cap[0]
    return max(1, min(threads, cap) if cap is not None else threads)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="lightning-dissect-stats")
        return pool


def _run_one(task: Callable[[], None], inference: bool) -> None:
    _local.inside = True
    torch.set_num_threads(1)  # the task's operations run on this thread only (OpenMP settings are per thread)
    try:
        # inference mode is per thread: a caller under torch.inference_mode() made its tensors there,
        # and they can be updated in place only inside it
        with torch.inference_mode(inference):
            task()
    finally:
        _local.inside = False


def run_tasks(tasks: Sequence[Callable[[], None]], workers: int) -> None:
    """Run every task, on ``workers`` threads, each task's torch operations on one thread.

    Tasks must write disjoint outputs. With one worker (or one task) they run here, in order,
    with torch on one thread. torch's thread count is restored afterwards. The first exception
    of a task is raised once all tasks have ended.
    """
    if not tasks:
        return
    if getattr(_local, "inside", False):  # nested: already on a worker, one thread
        for task in tasks:
            task()
        return
    before = torch.get_num_threads()
    try:
        if workers <= 1 or len(tasks) == 1:
            torch.set_num_threads(1)
            for task in tasks:
                task()
            return
        torch.set_num_threads(1)
        inference = torch.is_inference_mode_enabled()
        futures = [_pool(workers).submit(_run_one, task, inference) for task in tasks]
        error = None
        for future in futures:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error
    finally:
        torch.set_num_threads(before)


def run_side_by_side(calls: Sequence[Callable[[], None]], workers: int) -> None:
    """Run every call on a thread of its own, their :func:`run_tasks` sharing the ``workers`` threads.

    For the updates of several metrics of one batch (one per layer): each call's unit groups go to
    the same pool, so the workers move from one layer's groups to the next without waiting for the
    slowest group of each layer, and one layer's short operations (labels, anchors) run while the
    workers count another's. The calls must touch disjoint state. With one worker (or one call)
    they run here, in order. The first exception of a call is raised once all calls have ended.

    Examples:
        >>> out = {}
        >>> run_side_by_side([lambda: out.update(a=1), lambda: out.update(b=2)], 2)
        >>> sorted(out.items())
        [('a', 1), ('b', 2)]
    """
    if workers <= 1 or len(calls) <= 1 or getattr(_local, "inside", False):
        for call in calls:
            call()
        return
    inference = torch.is_inference_mode_enabled()
    errors: list[BaseException] = []

    def body(call: Callable[[], None]) -> None:
        _local.threads = workers  # worker_count() in the call sees the caller's count
        torch.set_num_threads(1)  # the call's own operations on this thread (OpenMP settings are per thread)
        try:
            with torch.inference_mode(inference):
                call()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(call,), name="lightning-dissect-layer", daemon=True)
               for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or ``None`` where it has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


#: Seconds between two trims of :func:`release_freed_memory`.
TRIM_INTERVAL = 5.0
_last_trim = [float("-inf")]


def release_freed_memory() -> None:
    """Give the pages freed inside the C allocator's arenas back to the system (glibc; a no-op elsewhere).

    The workers' temporaries are freed in their threads' arenas, where glibc keeps them: between
    batches of different sizes the arenas fragment and the resident memory creeps up with the
    number of batches. Called after every batch, it trims at most once per
    :data:`TRIM_INTERVAL` seconds: a trim costs about a millisecond, and the
    next batch then faults its pages in again (on the example's round, trimming after every
    batch made the round 20 % slower), while the memory stays flat in the number of batches.

    Examples:
        >>> release_freed_memory()
    """
    now = time.monotonic()
    if _trim is None or now - _last_trim[0] < TRIM_INTERVAL:
        return
    _last_trim[0] = now
    _trim(0)
