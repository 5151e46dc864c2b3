"""Freed memory kept for reuse: blocks freed and allocated again cost no fresh page faults (run in fresh processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from lightning_l2o.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a step's temporaries: 8 blocks of 4 MiB alive at once, then all freed
    blocks = [torch.empty(1 << 20).fill_(1.0) for _ in range(8)]
    del blocks
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_a_repeated_step(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's (Linux)")
def test_a_repeated_step_reuses_its_memory_instead_of_faulting_in_fresh_pages():
    applied, kept = page_faults_of_a_repeated_step("keep")
    _, default = page_faults_of_a_repeated_step("default")
    assert applied == "True"
    assert kept < 100  # 32 MiB (8192 pages) reused
    assert default > 500  # by default most of it goes back to the kernel and is faulted in again (8160 pages here)
