"""The process in which a Dask worker scores one submission (`ethml.training.cluster._score_task`).

A worker runs its tasks in threads, and a thread cannot be stopped: a submission whose scoring ran for
hours, or past the worker's memory limit (the nanny then kills the whole worker and every task on it),
held or took the worker down with it. Here the scoring runs in a child process of the worker's, as a local
validator scores each submission in a child: stopped at the spec's time limit, its data (heap and
anonymous memory) capped at the worker's memory limit, and ended when the worker goes away (a pipe that
only the worker holds open closes). Its input comes on stdin as a pickle from the worker; its answer goes
to stdout as JSON, so the worker never unpickles what a process that ran a submission's model wrote.

    python -m ethml.training.scoring_child LIFELINE_FD MEMORY_BYTES < pickle
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
import threading


def _end_with_worker(lifeline: int) -> None:
    """Exit when the worker's end of the lifeline closes (the worker exited or was killed)."""

    def watch() -> None:
        try:
            while os.read(lifeline, 1):
                pass
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def main() -> None:
    lifeline, memory = int(sys.argv[1]), int(sys.argv[2])
    _end_with_worker(lifeline)
    if memory > 0:  # (heap and anonymous mappings: numpy's arrays, whatever loads them)
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    answer: dict[str, object]
    try:
        spec_json, artifact, sha256, claimed, task_id, data = pickle.loads(sys.stdin.buffer.read())
        from ethml.training.jobs import load_submission, score
        from ethml.training.spec import parse_spec

        spec = parse_spec(spec_json)
        found = score(spec, load_submission(spec, artifact, sha256, task_id), claimed, data)
        answer = {"ok": [found.test_score, found.holdout_score, found.claim_reproduced]}
    except MemoryError:
        answer = {"error": f"its scoring ran past the Dask worker's memory limit ({memory // 2**20} MiB)"}
    except Exception as exc:  # noqa: BLE001 - every failure is a reason to vote 0, reported as such
        answer = {"error": str(exc) or type(exc).__name__}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
