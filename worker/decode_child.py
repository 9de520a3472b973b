"""A decode process (`python -m worker.decode_child SOCKET_FD SLAB_FD`), started by `worker.decoding`.

It imports Pillow and numpy, never torch: a fresh interpreter, so neither torch's threads (unsafe to fork)
nor the parent's `__main__` come with it. Per task it decodes, validates and hashes files with
`worker.pixels`, the functions the in-process path runs, writes the pixels one after another into its
slab (a memfd shared with the parent, grown when a task needs more) and answers with metadata only:
per file ("ok", shape, offset, sha256), ("local",) for an OpenEXR file (tone-mapped in the parent, in
torch), or ("error", exception)."""

from __future__ import annotations

import mmap
import os
import sys
from multiprocessing.connection import Connection

import numpy as np

from worker.pixels import ImageError, decode_hashed

ALIGN = 64  # each image starts on a cache line
KEEP_BYTES = 64 * 2**20  # a slab grown past this for a large task shrinks back before the next


class Slab:
    """This process's side of the shared buffer: the memfd, mapped whole."""

    def __init__(self, fd: int):
        self.fd = fd
        self.map = mmap.mmap(fd, os.fstat(fd).st_size)

    def fit(self, size: int) -> None:
        """Grow (or shrink back) the file and map it again: the parent maps what fstat says after each answer."""
        if size != len(self.map):
            self.map.close()
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)

    def put(self, pixels: np.ndarray, offset: int) -> None:
        end = offset + pixels.nbytes
        if end > len(self.map):
            self.fit(max(end, 2 * len(self.map)))
        np.copyto(np.ndarray(pixels.shape, pixels.dtype, buffer=self.map, offset=offset), pixels)


def decode_task(task: tuple, slab: Slab) -> list[tuple]:
    """task: (files as (path, keep_nonfinite), max_pixels, min_size)."""
    files, max_pixels, min_size = task
    if len(slab.map) > KEEP_BYTES:
        slab.fit(KEEP_BYTES)
    answers: list[tuple] = []
    offset = 0
    for path, keep_nonfinite in files:
        try:
            pixels, digest = decode_hashed(path, max_pixels=max_pixels, min_size=min_size,
                                           keep_nonfinite=keep_nonfinite)
            if pixels is None:
                answers.append(("local",))
                continue
            slab.put(pixels, offset)
            answers.append(("ok", pixels.shape, offset, digest))
            offset += -(-pixels.nbytes // ALIGN) * ALIGN
        except ImageError as exc:
            answers.append(("error", exc))
        except Exception as exc:  # noqa: BLE001  (out of memory and the like: the parent raises it as in-process)
            answers.append(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    return answers


def main(socket_fd: int, slab_fd: int) -> None:
    """Serve tasks until the parent says stop (None) or goes away (end of file)."""
    conn, slab = Connection(socket_fd), Slab(slab_fd)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        if task == "imports":  # what this process has loaded: the tests check torch is not among them
            conn.send(sorted(sys.modules))
            continue
        conn.send(decode_task(task, slab))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
