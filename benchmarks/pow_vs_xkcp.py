"""ethml's search paths against XKCP's Keccak-p[1600] code, side by side in one run, one core.

XKCP (the Keccak team's package, https://github.com/XKCP/XKCP) is not a dependency: point --xkcp at
a checkout. Its code is compiled into a small harness that hashes the same 84-byte PoW messages the
way a plain miner would (zero the state, absorb the padded block, 24 rounds, read the top lane), with:

- `xkcp-times4`: KeccakP-1600-times4, AVX2 (four states per call; the `ua` configuration);
- `xkcp-opt64-<config>`: the 64-bit single-state code in each configuration given (`lcu6`, `lcua`,
  `ua`, ...); the best is reported as `xkcp-opt64`.

Each path is timed for --seconds per round; rounds interleave the paths and the best round counts,
so a busy neighbour slows every path alike. Prints a table, or JSON with --json.

    python benchmarks/pow_vs_xkcp.py --xkcp ~/src/XKCP
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ethml.pow import available_paths, find_nonce
from ethml.pow.tune import cpu_model

HARNESS_TIMES4 = r"""
#include <stdint.h>
#include <string.h>
#include "KeccakP-1600-times4-SnP.h"

/* Hash n 84-byte messages (the nonce lane varies), four states per permutation; returns a checksum. */
uint64_t xkcp_times4(uint64_t n) {
    KeccakP1600times4_states st;
    uint64_t lanes[17 * 4], out[4], sum = 0;
    memset(lanes, 0x5a, sizeof lanes);
    for (int i = 0; i < 4; i++) { lanes[i * 17 + 10] = 0x01; lanes[i * 17 + 16] = 0x8000000000000000ULL; }
    for (uint64_t c = 0; c < n; c += 4) {
        for (int i = 0; i < 4; i++) lanes[i * 17 + 9] = c + i;
        KeccakP1600times4_InitializeAll(&st);
        KeccakP1600times4_AddLanesAll(&st, (const unsigned char *)lanes, 17, 17);
        KeccakP1600times4_PermuteAll_24rounds(&st);
        KeccakP1600times4_ExtractLanesAll(&st, (unsigned char *)out, 1, 1);
        sum += out[0] ^ out[1] ^ out[2] ^ out[3];
    }
    return sum;
}
"""

HARNESS_OPT64 = r"""
#include <stdint.h>
#include <string.h>
#include "KeccakP-1600-SnP.h"

uint64_t xkcp_opt64(uint64_t n) {
    KeccakP1600_state st;
    unsigned char block[136];
    uint64_t out, sum = 0;
    memset(block, 0x5a, sizeof block);
    block[84] = 0x01;
    memset(block + 85, 0, 136 - 85);
    block[135] = 0x80;
    for (uint64_t c = 0; c < n; c++) {
        memcpy(block + 72, &c, 8);
        KeccakP1600_Initialize(&st);
        KeccakP1600_AddBytes(&st, block, 0, 136);
        KeccakP1600_Permute_24rounds(&st);
        KeccakP1600_ExtractBytes(&st, (unsigned char *)&out, 0, 8);
        sum += out;
    }
    return sum;
}
"""


def build(xkcp: Path, work: Path, configs: list[str]) -> dict[str, ctypes.CDLL]:
    low, common = xkcp / "lib" / "low", xkcp / "lib" / "common"
    libs: dict[str, ctypes.CDLL] = {}
    flags = ["gcc", "-O2", "-shared", "-fPIC", "-march=native", f"-I{common}", f"-I{low / 'common'}"]
    keccak_common = low / "KeccakP-1600" / "common"
    t4 = low / "KeccakP-1600-times4" / "AVX2"
    (work / "t4.c").write_text(HARNESS_TIMES4)
    subprocess.run(
        [*flags, f"-I{t4}", f"-I{t4 / 'ua'}", f"-I{keccak_common}", str(work / "t4.c"),
         str(t4 / "KeccakP-1600-times4-SIMD256.c"), "-o", str(work / "t4.so")],
        check=True,
    )  # fmt: skip
    libs["xkcp-times4"] = ctypes.CDLL(str(work / "t4.so"))
    (work / "opt64.c").write_text(HARNESS_OPT64)
    plain = low / "KeccakP-1600" / "plain-64bits"
    for config in configs:
        out = work / f"opt64-{config}.so"
        subprocess.run(
            [*flags, f"-I{plain}", f"-I{plain / config}", f"-I{keccak_common}", str(work / "opt64.c"),
             str(plain / "KeccakP-1600-opt64.c"), "-o", str(out)],
            check=True,
        )  # fmt: skip
        libs[f"xkcp-opt64-{config}"] = ctypes.CDLL(str(out))
    for name, lib in libs.items():
        fn = lib.xkcp_times4 if name == "xkcp-times4" else lib.xkcp_opt64
        fn.argtypes, fn.restype = [ctypes.c_uint64], ctypes.c_uint64
    return libs


def timed(run, n: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xkcp", type=Path, required=True, help="an XKCP checkout (its lib/ directory is used)")
    ap.add_argument("--configs", default="lcu6,lcua,ua", help="XKCP opt64 configurations to build")
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds per path per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.xkcp / "lib" / "low").is_dir():
        sys.exit(f"error: {args.xkcp} is not an XKCP checkout (no lib/low)")
    if shutil.which("gcc") is None:
        sys.exit("error: gcc is needed to build the XKCP harness")
    challenge, miner = bytes(range(32)), bytes(range(100, 120))
    runners = {
        p: (lambda n, p=p: find_nonce(challenge, miner, 0, count=n, path=p)) for p in available_paths() if p != "python"
    }
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(args.xkcp, Path(tmp), args.configs.split(","))
        for name, lib in libs.items():
            runners[name] = lib.xkcp_times4 if name == "xkcp-times4" else lib.xkcp_opt64
        counts = {}
        for name, run in runners.items():  # calibrate each to about --seconds
            n = 1 << 14
            while (elapsed := n / timed(run, n)) < args.seconds / 4:
                n *= 4
            counts[name] = max(1 << 14, int(n * args.seconds / elapsed)) // 8 * 8
        best = dict.fromkeys(runners, 0.0)
        for _ in range(args.rounds):
            for name, run in runners.items():
                best[name] = max(best[name], timed(run, counts[name]))
    opt64 = {k: v for k, v in best.items() if k.startswith("xkcp-opt64-")}
    best["xkcp-opt64"] = max(opt64.values())
    report = {
        "cpu": cpu_model(),
        "hashes_per_second": best,
        "vs_xkcp_times4": {k: v / best["xkcp-times4"] for k, v in best.items()},
        "vs_xkcp_opt64": {k: v / best["xkcp-opt64"] for k, v in best.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"CPU: {report['cpu']}; one core, best of {args.rounds} interleaved rounds of {args.seconds} s")
    print(f"{'path':<22} {'M hashes/s':>10} {'vs times4':>10} {'vs opt64':>9}")
    for name, rate in sorted(best.items(), key=lambda kv: -kv[1]):
        t4, o64 = report["vs_xkcp_times4"][name], report["vs_xkcp_opt64"][name]
        print(f"{name:<22} {rate / 1e6:>10.2f} {t4:>9.2f}x {o64:>8.2f}x")


if __name__ == "__main__":
    main()
