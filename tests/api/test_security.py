"""API keys from the settings and from a file (what a mounted Kubernetes Secret provides),
re-read when the file changes; /metrics optionally behind the keys while /health and /ready stay
open; keys never in a log line nor in a start-up error; log lines bounded."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.api_keys import ApiKeys, parse_keys, read_keys_file
from server.settings import Settings
from tests.api.asgi_client import CHAT, AppFactory, body_for, client_for, error_of

pytestmark = pytest.mark.anyio

SECRET = "sk-refinery-very-secret-1"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def touch_later(path: Path, text: str) -> None:
    """Rewrite `path` with a later modification time (as a Secret rotation does)."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{SECRET}\nsecond-key, third-key\n")
    return path


async def test_keys_from_a_file_are_accepted_and_others_refused(
    make_app: AppFactory, keys_file: Path
) -> None:
    async with client_for(make_app(api_keys=["env-key"], api_keys_file=keys_file)) as client:
        for key in (SECRET, "second-key", "third-key", "env-key"):
            ok = await client.post(CHAT, json=body_for(CHAT), headers=bearer(key))
            assert ok.status_code == 200, key
        for wrong in ("", SECRET[:-1], SECRET + "x", "second-key,third-key"):
            refused = await client.post(CHAT, json=body_for(CHAT), headers=bearer(wrong))
            assert refused.status_code == 401
            assert error_of(refused)["type"] == "authentication_error"
        missing = await client.post(CHAT, json=body_for(CHAT))
        assert missing.status_code == 401


async def test_a_rotated_keys_file_takes_effect_without_a_restart(
    make_app: AppFactory, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.api_keys._RECHECK_S", 0.0)
    async with client_for(make_app(api_keys_file=keys_file)) as client:
        assert (await client.get("/v1/models", headers=bearer(SECRET))).status_code == 200
        touch_later(keys_file, "rotated-key\n")
        assert (await client.get("/v1/models", headers=bearer("rotated-key"))).status_code == 200
        assert (await client.get("/v1/models", headers=bearer(SECRET))).status_code == 401
        # A broken rotation (an empty file) keeps the keys read before: never open, never
        # locked out.
        touch_later(keys_file, "\n")
        assert (await client.get("/v1/models", headers=bearer("rotated-key"))).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


@pytest.mark.parametrize("metrics_auth", [False, True])
async def test_metrics_take_the_key_only_with_metrics_auth_and_probes_stay_open(
    make_app: AppFactory, metrics_auth: bool
) -> None:
    app = make_app(api_keys=[SECRET], metrics_auth=metrics_auth)
    async with client_for(app) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        anonymous = await client.get("/metrics")
        keyed = await client.get("/metrics", headers=bearer(SECRET))
    assert anonymous.status_code == (401 if metrics_auth else 200)
    assert keyed.status_code == 200
    assert "refinery_outstanding_sequences" in keyed.text


async def test_keys_never_reach_a_log_line(
    make_app: AppFactory, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(make_app(api_keys=["env-secret-key"], api_keys_file=keys_file)) as c:
        await c.post(CHAT, json=body_for(CHAT), headers=bearer(SECRET))
        await c.post(CHAT, json=body_for(CHAT), headers=bearer("wrong-" + SECRET))
        await c.get("/metrics", headers=bearer(SECRET))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "request_id=" in logged  # the access log did run
    for key in (SECRET, "env-secret-key", "second-key"):
        assert key not in logged


async def test_an_access_log_line_is_bounded_and_escaped(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    await client.get("/v1/" + "p" * 5000 + "%0Afake-line")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert len(line) < 400
    assert "\n" not in line


def test_a_settings_error_never_prints_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(api_keys=[SECRET, ""])
    assert SECRET not in str(err.value)
    missing = tmp_path / "no-such-file"
    with pytest.raises(ValidationError) as err:
        Settings(api_keys_file=missing)
    assert str(missing) in str(err.value)


def test_metrics_auth_without_keys_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="metrics_auth needs API keys"):
        Settings(api_keys=[], metrics_auth=True)


def test_a_keys_file_is_read_as_comma_or_newline_separated(tmp_path: Path) -> None:
    assert parse_keys(" a,b\nc\r\n\n d ,") == ["a", "b", "c", "d"]
    empty = tmp_path / "empty"
    empty.write_text("\n , \n")
    with pytest.raises(ValueError, match="holds no key") as err:
        read_keys_file(empty)
    assert str(empty) in str(err.value)


def test_keys_compare_by_digest_so_length_and_prefix_tell_nothing() -> None:
    keys = ApiKeys(["abc", "a-much-longer-key"])
    assert keys.required
    assert keys.matches("abc") and keys.matches(b"a-much-longer-key")
    assert not keys.matches("ab") and not keys.matches("abcd") and not keys.matches("")
    assert not ApiKeys([]).required
