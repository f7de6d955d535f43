"""The `whispr` command: token, migrate, and configuration errors (exit 2, the setting named)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import jwt
import pytest

from whispr.cli import main


def test_token_mints_a_verifiable_token_and_activates_the_dev_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "alice", "phone", "--dev", "--data-dir", str(tmp_path), "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    secret = (tmp_path / "dev-jwt-secret").read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert (claims["sub"], claims["device_id"]) == ("alice", "phone")
    assert claims["exp"] - claims["iat"] == 60
    with sqlite3.connect(tmp_path / "whispr.db") as db:
        assert db.execute("SELECT active FROM users WHERE user_id = 'alice'").fetchall() == [(1,)]


def test_migrate_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--dev", "--data-dir", str(tmp_path)]) == 0
    assert "applied migrations" in capsys.readouterr().out
    assert main(["migrate", "--dev", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "schema is up to date"


def test_serve_refuses_to_start_without_a_jwt_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WHISPR_JWT_SECRET", raising=False)
    assert main(["serve"]) == 2
    assert "HS256 needs WHISPR_JWT_SECRET" in capsys.readouterr().err


def test_short_secret_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WHISPR_JWT_SECRET", "short")
    assert main(["token", "alice", "phone"]) == 2
    assert "32" in capsys.readouterr().err
