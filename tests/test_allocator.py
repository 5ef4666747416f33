"""allocator.py: after fix_mmap_threshold, freed large blocks go back to the system instead of staying in the heap."""
from __future__ import annotations

import subprocess
import sys

import pytest

from minimind_v import allocator

PROBE = """
import sys, torch
from minimind_v import allocator
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "fixed":
    assert allocator.fix_mmap_threshold()
x = torch.ones(1 << 20); del x      # one freed 4 MiB block: glibc's threshold grows to 4 MiB
base = rss_mb()
blocks = [torch.ones(1 << 20) for _ in range(60)]   # 240 MiB of 4 MiB blocks
keep = blocks[-1]                   # the last one stays alive, as a loaded weight would
del blocks
print(round(rss_mb() - base))
"""


def _held_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="the allocator settings are glibc's (Linux); not here")
def test_freed_blocks_return_to_the_system_only_with_the_fixed_threshold():
    default, fixed = _held_mb("default"), _held_mb("fixed")
    assert default > 150, f"glibc kept {default} MiB of 240 freed: the case this module exists for did not occur"
    assert fixed < 20, f"{fixed} MiB of 240 freed MiB still held with the fixed threshold"
    assert isinstance(allocator.trim(), bool)
