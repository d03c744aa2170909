"""trim_heap: on glibc, the pages of memory Python freed go back to the system."""

from __future__ import annotations

import os
import platform

import pytest

from registrator.heap import trim_heap

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def test_trims_where_the_c_library_is_glibc() -> None:
    assert trim_heap() == (platform.libc_ver()[0] == "glibc")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_returns_freed_pages_below_the_top_of_the_heap() -> None:
    # 1 KB objects come from malloc's heap (larger than Python's small-object allocator
    # takes, smaller than glibc's mmap threshold); the last one keeps the heap's top in use,
    # so freeing the others leaves 20 MB of free pages that glibc keeps until trimmed.
    chunks = [bytes(1024) + bytes([i % 256]) for i in range(20_000)]
    sentinel = bytes(1024) + b"top"
    del chunks[:]
    before = rss_bytes()
    trim_heap()
    after = rss_bytes()
    assert before - after > 10 * 2**20, (before, after)
    assert sentinel.endswith(b"top")
