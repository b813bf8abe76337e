"""The process limits `ethml serve` sets for itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

resource = pytest.importorskip("resource")  # POSIX only

PROBE = (
    "import resource; from ethml.coordinator.server import raise_open_files_limit; "
    "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def test_serve_takes_the_hard_limit_of_open_files_as_its_soft_one() -> None:
    """Each connection, upload spool file and Redis connection of `ethml serve` is a file descriptor: started
    with a soft limit of 256 open files, it raises it to the hard limit (capped at MAX_OPEN_FILES when that
    is unlimited) and says so."""
    from ethml.coordinator.server import MAX_OPEN_FILES

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    assert wanted > 256, f"the hard limit of open files here is {hard}"

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    done = subprocess.run(
        [sys.executable, "-c", PROBE], preexec_fn=low, capture_output=True, text=True, timeout=120, check=True
    )
    said, soft_now, hard_now = done.stdout.split()
    assert int(said) == int(soft_now) == wanted and int(hard_now) == hard, done.stdout
