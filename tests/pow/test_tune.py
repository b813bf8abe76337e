"""The per-CPU autotune: its choice, the forced path, and its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from ethml.pow import _native_core, available_paths, resolve_path
from ethml.pow import tune as tune_mod

NATIVE_PATHS = [p for p in available_paths() if p != "python"]


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No choice remembered from another test; and in this process, short timing rounds: these tests are
    about what is measured when and what is cached (a measurement here is still one of every path, the
    best of its rounds), not about how steady the figures are, which `ethml bench-pow --tune` shows."""
    monkeypatch.setattr(tune_mod, "measure_paths", partial(tune_mod.measure_paths, round_seconds=0.005, rounds=2))
    tune_mod._memo.clear()
    yield
    tune_mod._memo.clear()


def _python(code: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "ETHML_POW_PATH"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**clean, "ETHML_DATA_DIR": str(data_dir), **env},
        check=False,
    )


def test_the_choice_is_a_supported_path_and_the_fastest_measured(tmp_path: Path) -> None:
    result = tune_mod.autotune(tmp_path)
    assert result.path in NATIVE_PATHS
    assert sorted(result.rates) == sorted(NATIVE_PATHS)
    assert all(rate > 0 for rate in result.rates.values())
    assert result.rates[result.path] == max(result.rates.values())
    assert result.source == "measured" and result.build == tune_mod.core_build()
    stored = json.loads((tmp_path / "pow-tune.json").read_text())
    assert stored["cpus"][tune_mod.cpu_model()]["path"] == result.path


def test_auto_uses_the_autotuned_path_and_a_second_process_reads_the_cache(tmp_path: Path) -> None:
    code = (
        "from ethml.pow import resolve_path; from ethml.pow.tune import autotune; "
        "print(resolve_path(), autotune().source)"
    )
    first = _python(code, tmp_path)
    assert first.returncode == 0, first.stderr
    path, source = first.stdout.split()
    assert path in NATIVE_PATHS and source == "measured"
    second = _python(code, tmp_path)
    assert second.stdout.split() == [path, "cache"], second.stderr


@pytest.mark.parametrize("forced", NATIVE_PATHS)
def test_a_forced_path_is_honoured_without_tuning(tmp_path: Path, forced: str) -> None:
    out = _python(
        "from ethml.pow import resolve_path, parallel_search; print(resolve_path())", tmp_path, ETHML_POW_PATH=forced
    )
    assert out.stdout.strip() == forced, out.stderr
    assert not (tmp_path / "pow-tune.json").exists()
    assert resolve_path(forced) == forced


def test_a_rebuilt_core_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tune_mod.autotune(tmp_path)
    tune_mod._memo.clear()
    assert tune_mod.autotune(tmp_path).source == "cache"
    # A rebuilt core: other bytes in the library file, so another build digest.
    library = _native_core.library_file()
    assert library is not None
    rebuilt = tmp_path / "rebuilt.so"
    shutil.copyfile(library, rebuilt)
    with rebuilt.open("ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(_native_core, "library_file", lambda: str(rebuilt))
    tune_mod._memo.clear()
    again = tune_mod.autotune(tmp_path)
    assert again.source == "measured" and again.build != first.build
    stored = json.loads((tmp_path / "pow-tune.json").read_text())
    assert stored["cpus"][tune_mod.cpu_model()]["build"] == again.build


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: entry.update(path="no-such-path"),
        lambda entry: entry["rates"].pop(next(iter(entry["rates"]))),
        lambda entry: entry.update(rates="fast"),
    ],
    ids=["unknown path", "another set of paths", "malformed rates"],
)
def test_a_cache_entry_that_does_not_fit_is_measured_again(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    tune_mod.autotune(tmp_path)
    cache = tmp_path / "pow-tune.json"
    data = json.loads(cache.read_text())
    damage(data["cpus"][tune_mod.cpu_model()])
    cache.write_text(json.dumps(data))
    tune_mod._memo.clear()
    result = tune_mod.autotune(tmp_path)
    assert result.source == "measured" and result.path in NATIVE_PATHS


def test_an_unreadable_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / "pow-tune.json").write_text("{not json")
    assert tune_mod.autotune(tmp_path).source == "measured"
    assert json.loads((tmp_path / "pow-tune.json").read_text())["version"] == tune_mod.CACHE_VERSION


def test_retune_measures_even_with_a_cache(tmp_path: Path) -> None:
    tune_mod.autotune(tmp_path)
    assert tune_mod.autotune(tmp_path, retune=True).source == "measured"


def _ethml_imports(path: Path) -> set[str]:
    """Every ethml module a source file imports, at the top or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ethml"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ethml"))
    return found


def test_the_tuner_does_not_depend_on_the_search_api() -> None:
    """core -> tune -> _native_core, one way: the tuner times the native core itself."""
    import ethml.pow.core
    import ethml.pow.tune

    assert "ethml.pow.core" not in _ethml_imports(Path(ethml.pow.tune.__file__))
    assert "ethml.pow.tune" in _ethml_imports(Path(ethml.pow.core.__file__))
