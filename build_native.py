"""cffi builder for ethml._native, the C proof-of-work core (API mode, out-of-line).

`pip install .` runs it through `cffi_modules` in setup.py; `python build_native.py` builds in place.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
NATIVE = "native"

ffibuilder = FFI()
# cffi's cdef understands integer #defines but not comments.
cdef = re.sub(r"/\*.*?\*/", "", (HERE / NATIVE / "keccak_pow.cdef").read_text(), flags=re.S)
ffibuilder.cdef(cdef)
ffibuilder.set_source(
    "ethml._native",
    '#include "keccak_pow.h"',
    sources=[f"{NATIVE}/keccak_pow.c"],
    include_dirs=[NATIVE],
    depends=[f"{NATIVE}/keccak_pow.h", f"{NATIVE}/keccak_rounds.h", f"{NATIVE}/keccak_pow_path.inc"],
    # No -march: the SIMD paths carry their own target attributes and are picked at run time,
    # so one build runs on any x86-64.
    extra_compile_args=["-O2", "-std=c99", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "build" / "cffi"), verbose=True)
