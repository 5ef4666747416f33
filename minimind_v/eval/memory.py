"""Peak memory of a stretch of work: resident set size on CPU, allocated tensor memory on CUDA.

On Linux the kernel keeps the process's RSS high-water mark (VmHWM) and resets it when "5" is written to
/proc/self/clear_refs, so each benchmark section gets its own peak. Where that is not possible the process's
lifetime peak (getrusage) is reported instead, and `exact` says so.
"""
from __future__ import annotations

import resource
import sys

import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device
        self.exact = True

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.exact = False

    def read(self) -> dict[str, float | bool]:
        """{"peak_mb", "current_mb", "kind", "exact"} since the last reset (or since the process started)."""
        if self.device.type == "cuda":
            return {"kind": "cuda_allocated", "exact": True,
                    "peak_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                    "current_mb": round(torch.cuda.memory_allocated(self.device) / 2**20, 1)}
        hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
        if hwm is None:  # not Linux: the lifetime peak (bytes on macOS, KiB elsewhere)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
            return {"kind": "rss", "exact": False, "peak_mb": round(peak, 1), "current_mb": None}
        return {"kind": "rss", "exact": self.exact, "peak_mb": round(hwm / 1024, 1), "current_mb": round(rss / 1024, 1)}
