"""The decode pool: files are decoded, validated and hashed in separate processes (`worker.decode_child`),
off this process's GIL and across cores; pixels come back through shared memory, never pickled.

Each decode process has a slab, a memfd both processes map, and a thread here that feeds it tasks (a few
files at a time, so small images do not pay a round trip each), waits for the metadata, copies the pixels
out of the slab and completes one future per file. A process that dies is replaced and its task tried
again file by file, so only the file that kills it, every time, ends with an error (`kills_decoder`).

One pool per process and size (`shared_pool`), started on first use, closed by `shutdown` (atexit, the
Celery worker's process shutdown, the embedded mode); a forked child forgets its parent's pools."""

from __future__ import annotations

import atexit
import math
import mmap
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from socket import socketpair

import numpy as np

from worker.pixels import ImageError

SLAB_BYTES = 8 * 2**20  # a slab's size at start: a task of 8 files of 256px fits; larger tasks grow it
FILES_PER_TASK = 8  # at most: small files share a round trip, a large window still spreads over every process
TRIES = 3  # a file whose decode process dies this often is that pair's error
File = tuple[Path, bool]  # (path, keep_nonfinite)
Decoded = tuple[np.ndarray, str] | None  # (H, W, 3) float32 pixels and sha256; None: decode here (OpenEXR)


def default_processes(device_type: str, cores: int | None = None) -> int:
    """A GPU waits on decoding: every core but one (for this process) decodes, up to 16. On the CPU the
    network needs the cores too: half of them decode, but two where there are two (on two cores, two
    decode processes ran faster than one in 12 of the 14 rows of bench/results-decode-*.json)."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(16, cores - 1)) if device_type == "cuda" else max(min(2, cores), cores // 2)


@dataclass
class _Task:
    files: list[File]
    futures: list[Future]
    max_pixels: int
    min_size: int
    tries: int = 0


@dataclass
class _Child:
    """One decode process and the parent's end of its socket and slab."""

    process: subprocess.Popen
    conn: Connection
    slab_fd: int
    view: mmap.mmap | None = field(default=None)

    @classmethod
    def start(cls) -> _Child:
        ours, theirs = socketpair()
        slab_fd = os.memfd_create("lpips-decode-slab", os.MFD_CLOEXEC)
        os.ftruncate(slab_fd, SLAB_BYTES)
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                         os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, "-m", "worker.decode_child", str(theirs.fileno()), str(slab_fd)],
                                   pass_fds=(theirs.fileno(), slab_fd), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        return cls(process, Connection(ours.detach()), slab_fd)

    def ask(self, message: object) -> object:
        self.conn.send(message)
        return self.conn.recv()

    def pixels(self, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A private copy of one image from the slab, mapped again when the child has resized it."""
        size = os.fstat(self.slab_fd).st_size
        if self.view is None or len(self.view) != size:
            if self.view is not None:
                self.view.close()
            self.view = mmap.mmap(self.slab_fd, size, prot=mmap.PROT_READ)
        shared = np.ndarray(shape, np.float32, buffer=self.view, offset=offset)
        copy = np.empty(shape, np.float32)
        np.copyto(copy, shared)
        del shared  # before any close of the map: it must hold no view
        return copy

    def stop(self, *, timeout_s: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.view is not None:
            self.view.close()
        os.close(self.slab_fd)


class DecodePool:
    """`processes` decode processes; `decode` returns a future per distinct file."""

    def __init__(self, processes: int, *, tries: int = TRIES):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes, self.tries = processes, tries
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._children: list[_Child | None] = [_Child.start() for _ in range(processes)]
        self._threads = [threading.Thread(target=self._serve, args=(slot,), name=f"decode-feed-{slot}", daemon=True)
                         for slot in range(processes)]
        self.closed = False
        for thread in self._threads:
            thread.start()

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children if child is not None]

    def decode(self, files: Sequence[File], *, max_pixels: int, min_size: int) -> dict[File, Future[Decoded]]:
        """Each distinct file once, in tasks of several files: at least as many tasks as processes."""
        if self.closed:
            raise RuntimeError("the decode pool is closed")
        distinct = list(dict.fromkeys(files))
        futures: dict[File, Future[Decoded]] = {file: Future() for file in distinct}
        per_task = max(1, min(FILES_PER_TASK, math.ceil(len(distinct) / self.processes)))
        for start in range(0, len(distinct), per_task):
            chunk = distinct[start:start + per_task]
            self._tasks.put(_Task(chunk, [futures[f] for f in chunk], max_pixels, min_size))
        return futures

    def _serve(self, slot: int) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                self._run(slot, task)
            except Exception as exc:  # noqa: BLE001  (no process could start, no memory to copy into: the task's
                for future in task.futures:  # files fail as an in-process decode would, and this thread goes on)
                    if not future.done():
                        future.set_exception(exc)
        child = self._children[slot]
        if child is not None:
            child.stop()
            self._children[slot] = None

    def _run(self, slot: int, task: _Task) -> None:
        child = self._children[slot]
        if child is None or child.process.poll() is not None:
            if child is not None:
                self._children[slot] = None  # until a new one has started
                child.stop()
            child = self._children[slot] = _Child.start()
        try:
            answers = child.ask(([(os.fspath(p), keep) for p, keep in task.files], task.max_pixels, task.min_size))
        except (EOFError, OSError):  # the process died (killed, crashed) during the task
            self._died(task, child)
            return
        for future, answer in zip(task.futures, answers):  # type: ignore[call-overload]
            if answer[0] == "ok":
                future.set_result((child.pixels(answer[1], answer[2]), answer[3]))
            elif answer[0] == "local":
                future.set_result(None)
            else:
                future.set_exception(answer[1])

    def _died(self, task: _Task, child: _Child) -> None:
        """Try again, each file alone: the one that kills its process every time gets the error."""
        status = child.process.wait()
        task.tries += 1
        if task.tries >= self.tries and len(task.files) == 1:
            how = f"signal {-status}" if status < 0 else f"exit status {status}"
            path = task.files[0][0]
            task.futures[0].set_exception(ImageError(path, "kills_decoder",
                                                     f"the decode process died on it {task.tries} times", how))
            return
        for file, future in zip(task.files, task.futures):
            self._tasks.put(_Task([file], [future], task.max_pixels, task.min_size, task.tries))

    def close(self) -> None:
        """Stop every process and wait for it; futures not yet answered fail."""
        if self.closed:
            return
        self.closed = True
        pending = self._drain()
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        for task in pending + self._drain():  # and what a dying process's task put back meanwhile
            for future in task.futures:
                future.set_exception(RuntimeError("the decode pool closed before this file was decoded"))

    def _drain(self) -> list[_Task]:
        tasks: list[_Task] = []
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return tasks
            if task is not None:
                tasks.append(task)


def decode_process_imports() -> list[str]:
    """The modules a fresh decode process has loaded: it must not load torch."""
    child = _Child.start()
    try:
        return child.ask("imports")  # type: ignore[return-value]
    finally:
        child.stop()


_pools: dict[int, DecodePool] = {}
_lock = threading.Lock()
_at_exit: list[bool] = []  # shutdown registered with atexit, once per process


def shared_pool(processes: int) -> DecodePool:
    """This process's pool of `processes` decode processes, started on first use."""
    with _lock:
        pool = _pools.get(processes)
        if pool is None or pool.closed:
            if not _at_exit:
                atexit.register(shutdown)
                _at_exit.append(True)
            pool = _pools[processes] = DecodePool(processes)
        return pool


def shutdown() -> None:
    """Close this process's pools: no decode process outlives it."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def _forget_after_fork() -> None:
    """A forked child (a Celery pool process) shares its parent's decode processes' sockets, not its
    threads: it starts its own pool when it needs one and never stops the parent's. The lock may have
    been held by a thread that did not come along: a new one."""
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
