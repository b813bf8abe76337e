"""`python -m ethml` without paying for a fresh interpreter each time.

One Python process (the zygote) imports ethml's command line and the libraries its commands import on use
(web3, eth-account, aiohttp, scikit-learn: about a second of CPU), then forks a child per command. The
child runs `ethml.__main__` exactly as `python -m ethml ARGS` does (runpy, `sys.argv`, the environment, the
working directory, stdin from /dev/null, stdout and stderr to files of their own) and exits with its exit
status. What a test checks (the exit status, every byte on stdout and stderr, what reached the chain) is
what a user's shell gets; only the imports already made are shared, and the zygote fails if making them
wrote anything to stderr, the one thing a fresh process would have shown that a forked one cannot.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: What the commands import on use; importing them again in the child is then free.
PRELOAD = (
    "ethml.cli",
    "web3",
    "eth_account",
    "aiohttp",
    "ethml.chain.deploy",
    "ethml.chain.tx",
    "ethml.requester",
    "ethml.oracle",
    "ethml.devnet",
    "ethml.rollout",
    "ethml.node",
    "ethml.ipfs",
    "ethml.ml",
    "ethml.training",
    "ethml.coordinator",
)

_SERVER = r"""
import atexit, importlib, json, os, runpy, sys, traceback

for name in sys.argv[1:]:
    importlib.import_module(name)
sys.stderr.flush()
os.write(1, b"ready\n")
requests = os.fdopen(0, "rb", buffering=0)  # unbuffered: nothing read ahead is inherited by a child
while True:
    line = requests.readline()
    if not line:
        break
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            sys.stdin = open(0, closefd=False)
            sys.argv = ["-m", *job["args"]]
            try:
                runpy.run_module("ethml", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code & 0xFF)
    os.write(1, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, f"{os.waitstatus_to_exitcode(status)}\n".encode())
"""


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class Zygote:
    """A Python that has imported ethml's libraries, forking one child per `python -m ethml` command."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.env, self.cwd, self.scratch = env, cwd, scratch
        self.runs = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *PRELOAD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        ready = self._line(timeout=300)
        if ready != "ready":
            raise AssertionError(f"the zygote did not start: {ready!r} {self._stderr()}")
        selector = selectors.DefaultSelector()
        assert self.proc.stderr is not None
        selector.register(self.proc.stderr, selectors.EVENT_READ)
        if selector.select(timeout=0):
            raise AssertionError(f"importing {', '.join(PRELOAD)} wrote to stderr: {self._stderr()}")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        line = b""
        while not line.endswith(b"\n"):
            if not selector.select(timeout=timeout):
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                return line.decode() or "<the zygote exited>"
            line += chunk
        return line.decode().strip()

    def _stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read().decode(errors="replace")

    def run(self, args: list[str], *, timeout: float = 120) -> Completed:
        """`python -m ethml ARGS` with the zygote's environment: its exit status, stdout and stderr."""
        self.runs += 1
        out, err = self.scratch / f"{self.runs}.stdout", self.scratch / f"{self.runs}.stderr"
        assert self.proc.stdin is not None
        job = {"args": args, "env": self.env, "cwd": str(self.cwd), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        pid = int(self._line(timeout=30))
        try:
            code = int(self._line(timeout=timeout))
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._line(timeout=30)
            raise AssertionError(f"python -m ethml {' '.join(args)} did not finish in {timeout:g} s") from None
        return Completed(args, code, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
