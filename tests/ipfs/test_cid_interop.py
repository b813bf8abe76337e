"""`ethml ipfs add` CIDs against two independent implementations: Debian's ipfs_cid and npm's ipfs-only-hash."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from ethml.ipfs import build_file
from tests.conftest import find_ipfs_cid, find_ipfs_only_hash, missing_service

SIZES = [0, 1, 1024, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024]


def _content(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _ipfs_cid_v0(path: Path) -> str:
    tool = find_ipfs_cid()
    if tool is None:
        missing_service("ipfs_cid (apt-get install ipfs-cid)")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)["CIDv0"])


def _ipfs_only_hash(paths: list[Path], cid_version: int) -> list[str]:
    module = find_ipfs_only_hash()
    if module is None:
        missing_service("ipfs-only-hash (npm ci)")
    # Kubo's --cid-version 1 implies raw leaves; ipfs-only-hash's CLI cannot say so, its API can.
    options = json.dumps({"cidVersion": cid_version, "rawLeaves": cid_version == 1})
    script = (
        f"const h = require({json.dumps(module)}); const fs = require('fs');"
        f"(async () => {{ for (const f of {json.dumps([str(p) for p in paths])}) "
        f"console.log(await h.of(fs.readFileSync(f), {options})); }})();"
    )
    return subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("cids")
    out = []
    for size in SIZES:
        p = root / f"f{size}"
        p.write_bytes(_content(size))
        out.append((size, p))
    return out


def test_v0_matches_ipfs_cid(files: list[tuple[int, Path]]) -> None:
    for size, path in files:
        assert str(build_file(path.read_bytes(), 0)[0]) == _ipfs_cid_v0(path), f"{size} bytes"


def test_v0_matches_ipfs_only_hash(files: list[tuple[int, Path]]) -> None:
    expected = _ipfs_only_hash([p for _, p in files], 0)
    assert [str(build_file(p.read_bytes(), 0)[0]) for _, p in files] == expected


def test_v1_raw_leaves_matches_ipfs_only_hash(files: list[tuple[int, Path]]) -> None:
    expected = _ipfs_only_hash([p for _, p in files], 1)
    got = [str(build_file(p.read_bytes(), 1)[0]) for _, p in files]
    assert got == expected
    assert got[1].startswith("bafkrei")  # one chunk: the raw leaf itself
    assert got[-1].startswith("bafybei")  # many chunks: a dag-pb root


def test_multi_block_files_have_the_expected_shape() -> None:
    root, blocks = build_file(_content(3 * 1024 * 1024), 0)
    assert len(blocks) == 13 and blocks[-1].cid == root
    root1, blocks1 = build_file(_content(256 * 1024), 1)
    assert len(blocks1) == 1 and root1.codec.name == "raw"
