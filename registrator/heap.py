"""Handing freed memory back to the operating system (glibc's `malloc_trim`).

Python gives what it frees to the C library's allocator, and glibc returns a freed page to the
system only when it lies at the top of its heap. The pages freed in the middle stay in the
agent's RSS until something reuses them: after startup, those of the buffers every imported
module's bytecode was read into; after a full reconcile, those of the decoded Docker list and
Consul service list. `malloc_trim(0)` hands back every whole free page (madvise), so the RSS
follows what the agent holds instead of its high-water mark. Measured in docs/performance.md.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def trim_heap() -> bool:
    """Returns the free pages of the C heap to the system; False (and nothing done) without
    glibc. Looked up at each call, not kept: once per full reconcile, a dlsym costs
    microseconds, and the agent keeps no state for it."""
    try:
        # CDLL(None): the symbols already loaded into the process, the C library's included.
        malloc_trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        # Not glibc (musl, macOS): nothing to call, and nothing their allocators need.
        return False
    malloc_trim(0)
    return True
