"""The native core against the pure-Python reference, on every path this CPU supports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ethml.errors import InvalidPowArgument, UnknownPowPath
from ethml.pow import (
    HAS_NATIVE,
    MAX_UINT256,
    StopFlag,
    _reference,
    available_paths,
    find_nonce,
    hash_message,
    parallel_search,
    target_for,
    verify,
    window_counter,
    window_nonce,
)
from ethml.pow.core import top64
from tests.conftest import ROOT

NATIVE_PATHS = [p for p in available_paths() if p != "python"]
ALL_PATHS = available_paths()
VECTORS = json.loads((ROOT / "tests" / "vectors" / "pow.json").read_text())["vectors"]


def test_generated_round_code_is_current() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_keccak_rounds
    finally:
        sys.path.pop(0)
    current = (ROOT / "native" / "keccak_rounds.h").read_text()
    assert gen_keccak_rounds.render() == current, "run `python tools/gen_keccak_rounds.py`"


def test_native_core_is_built() -> None:
    assert HAS_NATIVE, "ethml._native did not import: reinstall with `pip install -e .`"
    assert "scalar" in NATIVE_PATHS
    if os.uname().machine == "x86_64":
        # Every path this CPU can run must be offered (CI machines differ: AVX-512 on some, AVX2 on others).
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        needs = {
            "avx512-hybrid": {"avx512f", "bmi1", "bmi2"},
            "avx512": {"avx512f"},
            "avx2-hybrid": {"avx2", "bmi1", "bmi2"},
            "avx2": {"avx2"},
            "bmi2": {"bmi1", "bmi2"},
            "scalar": set(),
        }
        assert [p for p, wanted in needs.items() if wanted <= flags] == NATIVE_PATHS


@pytest.mark.parametrize("path", ALL_PATHS)
def test_shared_vectors_on_every_path(path: str) -> None:
    for v in VECTORS:
        challenge = bytes.fromhex(v["challenge"][2:])
        miner = bytes.fromhex(v["miner"][2:])
        nonce = int(v["nonce"], 16)
        difficulty = int(v["difficulty"], 16)
        counter = window_counter(nonce)
        # The vector's nonce is candidate `counter` of a search whose base is the nonce itself.
        assert window_nonce(nonce, counter) == nonce
        top = top64(challenge, miner, base=nonce, start=counter, count=1, path=path)
        assert top == [int(v["hash"][2:18], 16)]
        result = find_nonce(challenge, miner, target_for(difficulty), base=nonce, start=counter, count=1, path=path)
        assert result.found is v["valid"], v
        if result.found:
            assert result.nonce == nonce and result.hashes == 1


@settings(max_examples=60, deadline=None)
@given(
    challenge=st.binary(min_size=32, max_size=32),
    miner=st.binary(min_size=20, max_size=20),
    base=st.integers(0, MAX_UINT256),
    start=st.integers(0, 2**64 - 64),
    count=st.integers(1, 40),
)
def test_top64_matches_reference_for_random_batches(
    challenge: bytes, miner: bytes, base: int, start: int, count: int
) -> None:
    expected = top64(challenge, miner, base=base, start=start, count=count, path="python")
    for path in NATIVE_PATHS:
        assert top64(challenge, miner, base=base, start=start, count=count, path=path) == expected, path


@settings(max_examples=40, deadline=None)
@given(
    challenge=st.binary(min_size=32, max_size=32),
    miner=st.binary(min_size=20, max_size=20),
    base=st.integers(0, MAX_UINT256),
    difficulty=st.integers(1, 64),
)
def test_search_finds_the_same_first_nonce_as_the_reference(
    challenge: bytes, miner: bytes, base: int, difficulty: int
) -> None:
    target = target_for(difficulty)
    expected = find_nonce(challenge, miner, target, base=base, count=700, path="python")
    for path in NATIVE_PATHS:
        got = find_nonce(challenge, miner, target, base=base, count=700, path=path)
        assert (got.nonce, got.hashes) == (expected.nonce, expected.hashes), path
        if got.found:
            assert verify(challenge, miner, got.nonce, difficulty)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_edges(path: str) -> None:
    c, m = b"\x07" * 32, b"\x09" * 20
    assert find_nonce(c, m, MAX_UINT256, count=0, path=path).hashes == 0
    never = find_nonce(c, m, 0, count=100, path=path)
    assert (never.nonce, never.hashes, never.stopped) == (None, 100, False)
    first = find_nonce(c, m, MAX_UINT256, base=123 << 100, start=5, count=10, path=path)
    assert first.nonce == window_nonce(123 << 100, 5) and first.hashes == 1
    # The last counters of the window.
    last = find_nonce(c, m, MAX_UINT256, start=2**64 - 3, count=3, path=path)
    assert last.nonce == window_nonce(0, 2**64 - 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"challenge": b"\x00" * 31}, "challenge: must be 32 bytes"),
        ({"miner": b"\x00" * 21}, "miner: must be 20 bytes"),
        ({"miner": "0x1234"}, "miner: '0x1234' is not a 20-byte hex address"),
        ({"count": -1}, "count: must not be negative"),
        ({"start": -5}, "start: must not be negative"),
        ({"target": 2**256}, "target: must fit in 256 bits"),
        ({"target": -1}, "target: must not be negative"),
        ({"start": 2**64 - 1, "count": 2}, "must not exceed 2\\^64"),
        ({"count": 1.5}, "count: expected an integer"),
        ({"path": "sse9"}, "PoW path 'sse9' is not available"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"challenge": b"\x00" * 32, "miner": b"\x00" * 20, "target": 1, "count": 10}
    args.update(kwargs)
    with pytest.raises((InvalidPowArgument, UnknownPowPath), match=match):
        find_nonce(args.pop("challenge"), args.pop("miner"), args.pop("target"), **args)  # type: ignore[arg-type]


def test_hash_message_and_verify_accept_hex() -> None:
    challenge = "0x" + "ab" * 32
    miner = "0x" + "cd" * 20
    assert hash_message(challenge, miner, 5) == _reference.pow_hash(b"\xab" * 32, b"\xcd" * 20, 5)
    with pytest.raises(InvalidPowArgument, match="difficulty"):
        verify(challenge, miner, 5, 0)


def _stop(threads: int) -> None:
    flag = StopFlag()
    done = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        outcome.append(parallel_search(b"\x01" * 32, b"\x02" * 20, 0, threads=threads, stop=flag))
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)  # let every worker get deep into its chunk
    assert not done.is_set()
    asked = time.monotonic()
    flag.set()
    # Generous: on a loaded machine the threads may wait for a core. The latency itself (a few ms) is
    # a figure of `ethml bench-pow`, measured there, not asserted here.
    assert done.wait(timeout=30), f"the search did not stop within 30 s of the flag ({time.monotonic() - asked:.1f} s)"
    thread.join()
    result = outcome[0]
    assert result.stopped and not result.found  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name.startswith("ethml-pow-")]


@pytest.mark.parametrize("threads", [1, 2])
def test_cancellation_stops_every_thread(threads: int) -> None:
    # The C loop polls the flag every 65,536 candidates (~3 ms at 20 M/s): every thread returns, the
    # result says stopped, and no pool thread is left behind.
    _stop(threads)


def test_parallel_search_finds_valid_nonces_and_counts_hashes() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    result = parallel_search(b"\x03" * 32, b"\x04" * 20, target_for(1 << 18), threads=2, on_progress=progress)
    assert result.found and verify(b"\x03" * 32, b"\x04" * 20, result.nonce, 1 << 18)
    assert sum(seen) == result.hashes > 0


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )


def test_pure_python_fallback_is_explicit() -> None:
    out = _run_python(
        "from ethml.pow import HAS_NATIVE, resolve_path, find_nonce; "
        "print(HAS_NATIVE, resolve_path(), find_nonce(b'1'*32, b'2'*20, 2**256-1, count=1).hashes)",
        ETHML_PUREPYTHON="1",
    )
    assert out.stdout.split() == ["False", "python", "1"], out.stderr


def test_missing_native_core_is_an_error_not_a_slowdown() -> None:
    out = _run_python(
        "import sys; sys.modules['ethml._native'] = None\n"
        "from ethml.pow import HAS_NATIVE, find_nonce\n"
        "print(HAS_NATIVE)\n"
        "find_nonce(b'1'*32, b'2'*20, 1, count=1)\n",
    )
    assert out.stdout.strip() == "False"
    assert "NativeUnavailable" in out.stderr and "ETHML_PUREPYTHON=1" in out.stderr


def test_environment_forces_a_path() -> None:
    out = _run_python("from ethml.pow import resolve_path; print(resolve_path())", ETHML_POW_PATH="scalar")
    assert out.stdout.strip() == "scalar", out.stderr
