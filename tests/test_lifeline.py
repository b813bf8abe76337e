"""`ethml._lifeline.end_when_closed`: a child ends with the process that holds its pipe, whatever it is doing.

Both kinds of child that run a submission's model use it: a local trainer's or validator's job process
(`ethml.training.jobs.run_limited`) and a Dask worker's scoring process (`ethml.training.scoring_child`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHILD = """
import fcntl, os, re, resource, sys
from ethml._lifeline import end_when_closed
fd, at_least = int(sys.argv[1]), int(sys.argv[2])
if fd < at_least:  # (a busy process's descriptors go past 1024, which select.select refuses)
    resource.setrlimit(resource.RLIMIT_NOFILE, (at_least + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fd = fcntl.fcntl(fd, fcntl.F_DUPFD, at_least)
end_when_closed(fd)
os.write(1, b"ready\\n")
re.match(r"(a+)+$", "a" * 64 + "b")  # backtracks for hours, and the `re` module never lets another thread run
os.write(1, b"done\\n")
"""


def _start(read_end: int, at_least: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(read_end), str(at_least)],
        pass_fds=(read_end,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


#: The read end where the pipe gives it, and moved to descriptor 1500.
PLACES = [0, 1500]


@pytest.mark.parametrize("at_least", PLACES)
def test_a_child_that_holds_the_gil_is_killed_when_the_pipe_closes(at_least: int) -> None:
    """A thread waiting on the pipe needs the GIL to end the process: a model's predict in compiled code (a
    boosted tree of 600,000 nodes in a chain) held it, and its process outlived a killed Dask worker by 58 s."""
    read_end, write_end = os.pipe()
    child = _start(read_end, at_least)
    os.close(read_end)
    try:
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline() == b"ready\n", child.stderr.read().decode()
        os.close(write_end)
        assert child.wait(60) == -signal.SIGKILL
        assert child.stdout.read() == b""
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("at_least", PLACES)
def test_a_child_whose_pipe_closed_before_it_asked_ends_at_once(at_least: int) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    child = _start(read_end, at_least)
    os.close(read_end)
    try:
        assert child.wait(60) == 1
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.read() == b""
        assert child.stderr.read() == b""  # (an exception would also exit with 1)
    finally:
        child.kill()
        child.wait()
