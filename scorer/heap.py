"""Process memory settings: the score function's heap pages, and free heap given back (glibc only; a no-op elsewhere)."""

from __future__ import annotations

import functools

#: glibc ``mallopt`` parameters: blocks under ``M_MMAP_THRESHOLD`` come from the heap, and the heap is given
#: back to the kernel only when more than ``M_TRIM_THRESHOLD`` of it is free at its top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 8 << 20  # above the forward's largest temporary (~3 MB at 500 candidates)
TRIM_THRESHOLD_BYTES = 32 << 20  # the most freed heap kept mapped (RSS that is free memory)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_heap_pages() -> bool:
    """Serve the score function's big temporaries from pages the process already has.

    A 500-candidate forward allocates and frees tensors of 1 to 3 MB (the
    experts' activations); glibc maps each from the kernel and unmaps it on
    free, so every request paid ~570 page faults and the model's own p99 was
    10.4 ms against a p50 of 5.3 (``feedrank bench score``'s module, 1 thread).
    With these two thresholds the temporaries reuse heap pages: 2.5 faults
    per call, p50 5.4 / p99 7.3 ms, at the cost of keeping up to
    ``TRIM_THRESHOLD_BYTES`` of freed heap mapped (32 / 128 MB: 0 faults, p99
    6.4 ms, but up to 128 MB of RSS that is free memory, which blurs the load
    scenario's RSS-growth check). Returns False where the C library is not
    glibc (nothing changed there).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD_BYTES))


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_free_heap() -> int | None:
    """Give the free pages inside glibc's heaps back to the kernel (``malloc_trim(0)``).

    glibc returns freed memory to the kernel only from the top of a heap. A
    long-running worker allocates and frees in many sizes (fetch responses,
    prediction logs, the forward's temporaries) among long-lived objects, so
    freed pages in the middle of the heap stay resident: in the load
    scenario at 500 events/s the heap's in-use bytes (``mallinfo2``) were
    flat over the second half while RSS kept rising ~5 MiB/min.
    ``malloc_trim`` walks every arena and ``madvise``s their free pages away
    (a few ms for a few hundred MB of heap; ctypes releases the GIL for the
    call). Returns the resident bytes it gave back, None where the C library
    is not glibc.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    before = resident_bytes()
    trim(0)
    return max(0, before - resident_bytes())
