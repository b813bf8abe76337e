"""The process in which a Dask worker scores one submission (`ethml.training.cluster._score_task`).

A worker runs its tasks in threads, and a thread cannot be stopped: a submission whose scoring ran for
hours, or past the worker's memory limit (the nanny then kills the whole worker and every task on it),
held or took the worker down with it. Here the scoring runs in a child process of the worker's, as a local
validator scores each submission in a child:
- its data (heap and anonymous memory) capped at the worker's memory limit, its CPU time at the time it is
  allowed (the kernel stops it even while a compiled loop holds the GIL), no core files;
- ended when the worker goes away (a pipe that only the worker holds open closes, and the kernel kills the
  child, also while a compiled loop holds the GIL);
- stdout and stderr are /dev/null (a model's `verbose` progress lines go nowhere); its input comes on stdin
  (a pickle whose arrays follow it raw, so the worker copies none of them) and its answer goes back on a pipe
  of its own: a mark once it is ready to score (the worker's clock for the scoring starts there), then JSON,
  so the worker never unpickles what a process that ran a submission's model wrote.

    python -m ethml.training.scoring_child LIFELINE_FD ANSWER_FD MEMORY_BYTES CPU_SECONDS < framed pickle
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import sys
from typing import Any, BinaryIO

from ethml._lifeline import end_when_closed

#: The mark a child writes on its answer pipe once it has its input and has imported what scoring needs.
READY = b"R"
#: The longest reason a child sends back (a refusal can name a great many things).
MAX_REASON = 1000


def write_framed(stream: BinaryIO, obj: Any) -> None:
    """`obj` as a pickle (protocol 5) whose large buffers (numpy's arrays) follow it raw, each length-prefixed:
    they are written from the arrays' own memory, not copied into the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    stream.write(struct.pack("<QQ", len(head), len(buffers)))
    stream.write(head)
    for buffer in buffers:
        raw = buffer.raw()
        stream.write(struct.pack("<Q", raw.nbytes))
        stream.write(raw)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytearray:
    out = bytearray(size)
    view, done = memoryview(out), 0
    while done < size:
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise EOFError("the worker's input ended early")
        done += got
    return out


def read_framed(stream: BinaryIO) -> Any:
    """What `write_framed` wrote."""
    head_size, count = struct.unpack("<QQ", _read_exactly(stream, 16))
    head = _read_exactly(stream, head_size)
    buffers = [_read_exactly(stream, struct.unpack("<Q", _read_exactly(stream, 8))[0]) for _ in range(count)]
    return pickle.loads(head, buffers=buffers)


def _import_what_scoring_needs(estimators: dict[str, Any]) -> None:
    """The loader and every estimator's module, before the ready mark: the time limit is the scoring's, not
    the imports' (a local validator's process imports them as it starts too, but once)."""
    import importlib

    import skops.io  # noqa: F401

    for path, _kind, _params in estimators.values():
        importlib.import_module(path.rsplit(".", 1)[0])


def main() -> None:
    lifeline, answer, memory, cpu = (int(a) for a in sys.argv[1:5])
    end_when_closed(lifeline)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cpu > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    if memory > 0:  # (heap and anonymous mappings: numpy's arrays, whatever loads them)
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    reply: dict[str, object]
    try:
        spec_json, artifact, sha256, claimed, task_id, data = read_framed(sys.stdin.buffer)
        from ethml.training.jobs import load_submission, score
        from ethml.training.spec import ESTIMATORS, parse_spec

        _import_what_scoring_needs(ESTIMATORS)
        os.write(answer, READY)
        spec = parse_spec(spec_json)
        found = score(spec, load_submission(spec, artifact, sha256, task_id), claimed, data)
        reply = {"ok": [found.test_score, found.holdout_score, found.claim_reproduced]}
    except MemoryError:
        reply = {"error": f"its scoring ran past the Dask worker's memory limit ({memory // 2**20} MiB)"}
    except Exception as exc:  # noqa: BLE001 - every failure is a reason to vote 0, reported as such
        reason = str(exc) or type(exc).__name__
        reply = {"error": reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "…"}
    os.write(answer, json.dumps(reply).encode())
    os._exit(0)


if __name__ == "__main__":
    main()
