"""Peak resident memory of this process from /proc (Linux), shared by the memory benchmarks.

``reset_peak()`` sets VmHWM (the RSS high-water mark) to the current RSS, so a later
``proc_status_kb("VmHWM")`` is the peak of what ran in between. Elsewhere both return
False / None and the callers fall back to ``resource.getrusage`` (a peak since process start).
"""

from __future__ import annotations


def proc_status_kb(key: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), None where unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
