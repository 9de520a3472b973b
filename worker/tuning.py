"""Process-wide settings for a process that computes LPIPS: the allocator, the GIL's switch interval and
cuDNN's TF32. The engine itself changes nothing outside its own objects; process entry points (the worker
process, the embedded mode, `compare`, the bench) call `tune_process`, and every engine built by
`Engine.from_settings` has `for_device` applied to its device."""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable

import torch

SWITCH_INTERVAL_S = 5e-4


def keep_freed_memory(*, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc keep freed layer-sized buffers for the next batch instead of handing them back to the OS,
    which faults them in again page by page (12,000 faults a 16-image alex batch at 256px; vgg's fp32
    layers at 256px took longer to fault in than to normalise). glibc maps any buffer over its mmap
    threshold, which cannot exceed 32 MiB, and unmaps it when freed, so nothing is mapped: buffers come
    from the heap, whose top goes back to the OS only beyond `trim_threshold`. For processes that only
    compute LPIPS (the worker, the CLI), on their main thread. False where the C library is not glibc."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))


def tune_process() -> None:
    """For a process that computes LPIPS (the worker, the embedded mode, `compare`): keep freed memory,
    and have Python hand the GIL over within 0.5 ms instead of 5, so the forward pass's short torch
    calls do not queue behind decode threads (alex 64px: 0.70x -> 0.77x the reference; 256px unchanged)."""
    keep_freed_memory()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def for_device(device: torch.device) -> None:
    """On CUDA, turn cuDNN's TF32 off for the process (on by default: fp32 convolutions with a 10-bit
    mantissa), so fp32 distances are computed in fp32."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False


def trim_heap() -> bool:
    """glibc's malloc_trim(0): hand every free page of the heap back to the OS, which `keep_freed_memory`
    otherwise keeps for the next batch. True if memory was released; False too where libc is not glibc."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


class IdleTrim:
    """Trims the heap once a worker has been idle for `quiet_s`: between bursts a vgg worker would
    otherwise hold the GBs its batches freed. `busy()` when work starts, `idle()` when it ends."""

    def __init__(self, quiet_s: float, trim: Callable[[], object] = trim_heap):
        self.quiet_s, self.trim = quiet_s, trim
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def busy(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def idle(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.quiet_s, self.trim)
            self._timer.daemon = True
            self._timer.start()

    stop = busy  # the worker process is ending: no trim to come
