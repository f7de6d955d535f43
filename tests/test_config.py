"""Settings: environment parsing, dev defaults and validation with errors that name the setting."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from whispr.config import ConfigError, Settings


def test_environment_variables_override_defaults() -> None:
    settings = Settings.from_env(
        {
            "WHISPR_PORT": "4100",
            "WHISPR_DEV": "true",
            "WHISPR_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "WHISPR_SHUTDOWN_GRACE": "2.5",
            "WHISPR_MAX_LOOP_LAG": "0.5",
            "WHISPR_DATA_DIR": "/srv/whispr",
            "UNRELATED": "x",
        }
    )
    assert settings.port == 4100
    assert settings.dev is True
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.shutdown_grace == 2.5
    assert settings.max_loop_lag == 0.5
    assert settings.data_dir == Path("/srv/whispr")
    assert settings.resolved_store_url == "sqlite:////srv/whispr/whispr.db"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHISPR_PORT": "four"}, "WHISPR_PORT must be a whole number"),
        ({"WHISPR_DEV": "maybe"}, "WHISPR_DEV must be true or false"),
        ({"WHISPR_SHUTDOWN_GRACE": "soon"}, "WHISPR_SHUTDOWN_GRACE must be a number"),
    ],
)
def test_malformed_environment_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


VALID = Settings(jwt_secret="x" * 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"jwt_secret": ""}, "HS256 needs WHISPR_JWT_SECRET"),
        ({"jwt_algorithm": "none"}, "jwt_algorithm must be"),
        ({"jwt_algorithm": "RS256"}, "RS256 needs WHISPR_JWT_PUBLIC_KEYS"),
        ({"port": 70000}, "port must be"),
        ({"tls_cert": "cert.pem"}, "TLS needs both"),
        ({"store_url": "mysql://db"}, "store_url must start with"),
        ({"log_format": "xml"}, "log_format must be"),
        ({"shutdown_grace": 0.0}, "shutdown_grace must be positive"),
        ({"idle_timeout": 0.0}, "idle_timeout must be positive"),
        ({"messages_per_minute": 0}, "messages_per_minute must be at least 1"),
        ({"max_content_bytes": 0}, "max_content_bytes must be at least 1"),
        ({"max_connections": 0}, "max_connections must be positive"),
        ({"max_loop_lag": 0.0}, "max_loop_lag must be positive"),
        ({"max_rss": -1}, "max_rss must be positive"),
        ({"overload_retry_after": 0}, "overload_retry_after must be positive"),
    ],
)
def test_validation_names_the_wrong_setting(change: dict[str, object], message: str) -> None:
    VALID.validate()
    with pytest.raises(ConfigError, match=message):
        replace(VALID, **change).validate()  # type: ignore[arg-type]


def test_dev_mode_creates_private_secrets_once(tmp_path: Path) -> None:
    first = Settings(dev=True, data_dir=tmp_path).with_dev_defaults()
    second = Settings(dev=True, data_dir=tmp_path).with_dev_defaults()
    assert len(first.jwt_secret) >= 32
    assert first.jwt_secret == second.jwt_secret
    assert first.api_key == second.api_key != first.jwt_secret
    assert stat.S_IMODE((tmp_path / "dev-jwt-secret").stat().st_mode) == 0o600
    first.validate()
    assert first.resolved_log_format == "text"


def test_production_mode_generates_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path).with_dev_defaults()
    assert settings.jwt_secret == ""
    assert not list(tmp_path.iterdir())
    assert settings.resolved_log_format == "json"
