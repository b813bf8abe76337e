"""`ethml._lifeline.end_when_closed`: a child ends with the process that holds its pipe, whatever it is doing.

Both kinds of child that run a submission's model use it: a local trainer's or validator's job process
(`ethml.training.jobs.run_limited`) and a Dask worker's scoring process (`ethml.training.scoring_child`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import ROOT

CHILD = """
import os, re, sys
from ethml._lifeline import end_when_closed
end_when_closed(int(sys.argv[1]))
os.write(1, b"ready\\n")
re.match(r"(a+)+$", "a" * 64 + "b")  # backtracks for hours, and the `re` module never lets another thread run
os.write(1, b"done\\n")
"""


def _start(read_end: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(read_end)], pass_fds=(read_end,), stdout=subprocess.PIPE, cwd=ROOT
    )


def test_a_child_that_holds_the_gil_is_killed_when_the_pipe_closes() -> None:
    """A thread waiting on the pipe needs the GIL to end the process: a model's predict in compiled code (a
    boosted tree of 600,000 nodes in a chain) held it, and its process outlived a killed Dask worker by 58 s."""
    read_end, write_end = os.pipe()
    child = _start(read_end)
    os.close(read_end)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        os.close(write_end)
        assert child.wait(60) == -signal.SIGKILL
        assert child.stdout.read() == b""
    finally:
        child.kill()
        child.wait()


def test_a_child_whose_pipe_closed_before_it_asked_ends_at_once() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    child = _start(read_end)
    os.close(read_end)
    try:
        assert child.wait(60) == 1
        assert child.stdout is not None
        assert child.stdout.read() == b""
    finally:
        child.kill()
        child.wait()
