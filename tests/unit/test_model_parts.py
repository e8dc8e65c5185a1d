"""A GGUF split over PyPI packages: parts found through their distributions' file lists, joined
in part order and verified against size and SHA-256 — on a small synthetic split whose fake
distributions live in a temporary folder (`files_of` stands in for importlib.metadata)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import server.model_cache as cache
from server.builtin_models import BUILTIN_MODELS, QWEN_CODER_SPLIT, builtin_model
from server.gguf_parts import PartsCorrupt, SplitGguf, find_parts, installed_files, reassemble
from server.model_cache import ModelCacheError, ModelSourceMissing, ensure_converted

PARTS = [bytes([i]) * (1000 + i) for i in range(1, 5)]  # distinct sizes: order matters
WHOLE = b"".join(PARTS)


def split_of(data: bytes = WHOLE, parts: int = len(PARTS)) -> SplitGguf:
    return SplitGguf(package_prefix="fake-model-part", parts=parts, version="0.2.0",
                     file_name="fake.gguf", size=len(data),
                     sha256=hashlib.sha256(data).hexdigest())


class FakeDists:
    """Installed distributions `fake-model-part1…N` as pip lays them out: code, dist-info and
    one data file each."""

    def __init__(self, root: Path, payloads: list[bytes], version: str = "0.2.0") -> None:
        self.root, self.version = root, version
        self.dists: dict[str, list[tuple[str, Path]]] = {}
        for index, payload in enumerate(payloads, start=1):
            package = f"fake_model_part{index}"
            records = [f"{package}/__init__.py", f"{package}/data/part{index:02d}.bin",
                       f"{package}-{version}.dist-info/METADATA"]
            for record in records:
                path = root / record
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(payload if record.endswith(".bin") else b"")
            self.dists[f"fake-model-part{index}"] = [(r, root / r) for r in records]

    def __call__(self, name: str) -> tuple[str, list[tuple[str, Path]]] | None:
        files = self.dists.get(name)
        return None if files is None else (self.version, files)


def test_parts_are_joined_in_part_order_and_verified(tmp_path: Path) -> None:
    dists = FakeDists(tmp_path / "site", PARTS)
    parts = find_parts(split_of(), dists)
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin", "part04.bin"]
    out = reassemble(split_of(), tmp_path, files_of=dists)
    assert out == tmp_path / "fake.gguf"
    assert out.read_bytes() == WHOLE


def test_a_missing_part_is_named_with_the_install_command(tmp_path: Path) -> None:
    dists = FakeDists(tmp_path / "site", PARTS)
    del dists.dists["fake-model-part3"]
    with pytest.raises(ModelSourceMissing, match=r"fake-model-part3==0\.2\.0.*\[qwen\]"):
        find_parts(split_of(), dists)


def test_a_part_of_another_version_is_refused(tmp_path: Path) -> None:
    dists = FakeDists(tmp_path / "site", PARTS, version="0.1.0")
    with pytest.raises(ModelSourceMissing, match=r"fake-model-part1==0\.2\.0 \(found 0\.1\.0\)"):
        find_parts(split_of(), dists)


def test_a_part_without_its_data_file_is_refused(tmp_path: Path) -> None:
    dists = FakeDists(tmp_path / "site", PARTS)
    (tmp_path / "site" / "fake_model_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(ModelSourceMissing, match="part02.bin"):
        find_parts(split_of(), dists)


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "swapped_order"])
def test_damaged_parts_fail_the_check_and_leave_no_file(tmp_path: Path, damage: str) -> None:
    payloads = list(PARTS)
    if damage == "flipped_byte":
        payloads[1] = b"\xff" + payloads[1][1:]
    elif damage == "truncated":
        payloads[3] = payloads[3][:-1]
    else:
        payloads[0], payloads[1] = payloads[1], payloads[0]
    dists = FakeDists(tmp_path / "site", payloads)
    with pytest.raises(PartsCorrupt, match="force-reinstall"):
        reassemble(split_of(), tmp_path, files_of=dists)
    assert not (tmp_path / "fake.gguf").exists()


def test_a_split_model_converts_through_the_cache_and_drops_the_joined_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dists = FakeDists(tmp_path / "site", PARTS)
    seen: list[bytes] = []

    def convert(gguf: Path, out: Path, title: str) -> None:
        seen.append(gguf.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(cache, "_convert", convert)
    model = cache.CachedModel(title="Fake", folder="fake-bf16", source="fake",
                              locate_gguf=lambda work: reassemble(split_of(), work, files_of=dists))
    root = tmp_path / "cache"
    folder = ensure_converted(model, root)
    assert seen == [WHOLE]
    assert cache.is_complete(folder)
    assert sorted(p.name for p in root.iterdir()) == [".fake-bf16.lock", "fake-bf16"]


def test_the_qwen_split_matches_its_published_size() -> None:
    """21 full 50 MiB parts and a last one of 16,315,968 bytes: the recorded size adds up."""
    assert QWEN_CODER_SPLIT.parts == 22
    assert QWEN_CODER_SPLIT.size == 21 * 52_428_800 + 16_315_968
    assert len(QWEN_CODER_SPLIT.packages()) == 22


def test_builtin_names_resolve_and_paths_do_not() -> None:
    assert builtin_model(None) is BUILTIN_MODELS["smollm2"]
    assert builtin_model("qwen2.5-coder-1.5b") is BUILTIN_MODELS["qwen2.5-coder-1.5b"]
    assert builtin_model("./qwen2.5-coder-1.5b") is None
    assert builtin_model("Qwen/Qwen2.5-Coder-1.5B-Instruct") is None


def test_the_qwen_model_without_its_parts_asks_for_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether or not the parts are installed here, a missing one gives the install hint."""
    import server.gguf_parts as parts

    monkeypatch.setattr(parts, "installed_files", lambda name: None)
    with pytest.raises(ModelSourceMissing, match=r"\[qwen\]"):
        ensure_converted(BUILTIN_MODELS["qwen2.5-coder-1.5b"], tmp_path)


def test_installed_files_reads_a_real_distribution() -> None:
    version, files = installed_files("filelock") or ("", [])
    assert version and any(record.endswith(".py") for record, _ in files)
    assert installed_files("no-such-distribution-xyz") is None


def test_an_unwritable_cache_is_reported_before_the_parts_are_joined(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ModelCacheError, match=str(blocker)):
        ensure_converted(BUILTIN_MODELS["qwen2.5-coder-1.5b"], blocker / "cache")
