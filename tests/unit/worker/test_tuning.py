"""Handing kept memory back: a process that keeps freed memory (as the worker does) holds a large freed
buffer until malloc_trim runs, then returns it to the OS; the idle trim runs once, after the quiet period,
and not while work goes on."""

import subprocess
import sys
import threading

from worker.tuning import IdleTrim

RSS_AFTER_TRIM = """
import numpy as np
from worker.tuning import keep_freed_memory, trim_heap

def rss_mb():
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS')) / 1024

assert keep_freed_memory()
base = rss_mb()
buffer = np.ones(512 * 2**20 // 8)  # 512 MiB from the heap: keep_freed_memory maps nothing
del buffer
kept = rss_mb()
released = trim_heap()
print(round(kept - base), round(rss_mb() - base), released)
"""


def test_trim_hands_a_freed_buffer_back_to_the_os():
    done = subprocess.run([sys.executable, "-c", RSS_AFTER_TRIM], capture_output=True, text=True, check=True)
    kept_mb, after_mb, released = done.stdout.split()
    assert int(kept_mb) > 500  # freed, but still resident: what a worker holds between bursts
    assert int(after_mb) < 50
    assert released == "True"


def test_idle_trim_runs_once_after_the_quiet_period_and_not_while_busy():
    trimmed = threading.Event()
    calls = []
    trim = IdleTrim(1.0, trim=lambda: (calls.append(1), trimmed.set()))
    trim.idle()
    trim.busy()  # work arrived before the quiet period ended: no trim
    assert not trimmed.wait(1.5) and calls == []
    trim.idle()
    assert trimmed.wait(10)
    assert not threading.Event().wait(0.2) and calls == [1]  # once, not every quiet period
    trim.stop()
