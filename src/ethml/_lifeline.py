"""A child process that ends with the process that started it, even by `kill -9`, whatever the child is doing.

The parent keeps the write end of a pipe that only it holds, and writes nothing to it; the kernel closes it
when the parent ends, however it ends. The child holds the read end and calls `end_when_closed`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading


def end_when_closed(fd: int) -> None:
    """End this process when the write end of the pipe whose read end is `fd` closes.

    On Linux the kernel ends it: the read end asks for a signal when the pipe changes (O_ASYNC), and the signal
    asked for is SIGKILL instead of SIGIO. No Python code has to run for that, so it also works while a model's
    fit or predict in compiled code holds the GIL for its whole run. If the pipe closed before the request took
    effect, this process ends here. Elsewhere (or where the request is refused) a thread waits on the pipe and
    exits the process with status 1 when it closes."""
    set_signal = getattr(fcntl, "F_SETSIG", None)
    if set_signal is not None:
        try:
            fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(fd, set_signal, signal.SIGKILL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        except OSError:
            pass
        else:
            closed = select.poll()  # (not select.select, which refuses a descriptor of 1024 or more)
            closed.register(fd, select.POLLIN)
            if closed.poll(0):  # readable (or hung up) with nothing ever written: closed
                os._exit(1)
            return

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
