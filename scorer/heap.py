"""Process memory settings for the score function (glibc only; a no-op elsewhere)."""

from __future__ import annotations

#: glibc ``mallopt`` parameters: blocks under ``M_MMAP_THRESHOLD`` come from the heap, and the heap is given
#: back to the kernel only when more than ``M_TRIM_THRESHOLD`` of it is free at its top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 8 << 20  # above the forward's largest temporary (~3 MB at 500 candidates)
TRIM_THRESHOLD_BYTES = 32 << 20  # the most freed heap kept mapped (RSS that is free memory)


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
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD_BYTES))
