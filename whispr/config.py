"""Node settings: defaults, environment variables (`WHISPR_*`) and `whispr serve` flags.

Every number of contract.md is a default here. `Settings.from_env()` reads the environment;
the CLI overrides single fields. Validation happens once, in `Settings.validate()`, with errors
that say what is wrong in plain words (style.md §3.8); the app refuses to start on any of them.

Embedded default (no Redis, no PostgreSQL): `store_url` is a SQLite file and `redis_url` is empty.
In dev mode (`--dev`) a random JWT secret and API key are created once under `data_dir` so that
`whispr serve --dev` and `whispr token` agree without any configuration.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import unquote


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it and says why."""


CLUSTER_SCHEME = "redis+cluster://"
"""`redis_url` names a Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port…]`."""


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://…`)."""
    return url.startswith(CLUSTER_SCHEME)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The seeds `[(host, port), …]`, user name and password of a `redis+cluster://` URL.

    Raises:
        ValueError: not a cluster URL, no seed, a seed without a numeric port, or a database other than 0.
    """
    if not is_cluster_url(url):
        raise ValueError(f"not a Redis Cluster URL (want {CLUSTER_SCHEME}host:port[,host:port…])")
    rest, _, database = url[len(CLUSTER_SCHEME) :].partition("/")
    if database not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, got /{database}")
    credentials, _, hosts = rest.rpartition("@")
    user, _, password = credentials.partition(":")
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        host, _, port = seed.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Redis Cluster seed {seed.strip()!r} is not host:port")
        seeds.append((host, int(port)))
    return seeds, unquote(user) or None, unquote(password) or None


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 4000
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    dev: bool = False
    data_dir: Path = Path("var")
    log_format: str = ""  # "" = text in dev, json otherwise
    log_level: str = "INFO"
    store_url: str = ""  # "" = sqlite:///<data_dir>/whispr.db
    redis_url: str = ""  # "" = in-process pub/sub, presence and limits
    jwt_algorithm: str = "HS256"  # HS256 (secret) or RS256 / ES256 / EdDSA (public keys)
    jwt_secret: str = ""  # HS256 secret, at least 32 bytes
    jwt_public_keys: str = ""  # PEM file, or JWKS file (*.json, `kid` selects), for the asymmetric algorithms
    jwt_issuer: str = ""
    jwt_audience: str = ""
    api_key: str = ""  # bearer key of /api/v1
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    shutdown_grace: float = 30.0
    idle_timeout: float = 90.0  # seconds without an inbound frame before close 4000 (contract.md §1)
    connections_per_ip: int = 10  # concurrent sockets per client IP (contract.md §5)
    connects_per_5min: int = 20  # connect attempts per client IP per 5 minutes
    messages_per_minute: int = 100  # per user, one budget across nodes
    joins_per_minute: int = 30  # per socket ("channel hopping")
    max_content_bytes: int = 10_000  # UTF-8 bytes of a message's content
    user_service_url: str = ""  # "" = the store's users table; else GET {url}/users/{id} -> {"active": bool}
    # Redirect mode (whispr.cluster.health): past any of these, new sockets get 503 + Retry-After.
    max_connections: int = 15_000  # open sockets per node: the machine allows 20,000 open files per process
    max_loop_lag: float = 0.25  # seconds: a saturated loop, not one unlucky tick (reliability.md D2: 0.1 s)
    max_rss: int = 1536 * 1024 * 1024  # bytes: 1.5 GiB, under a 2 GiB container limit
    overload_retry_after: int = 5  # seconds, the Retry-After of an overload refusal

    _ENV_PREFIX = "WHISPR_"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings with every `WHISPR_<FIELD>` variable of `env` (default: os.environ) applied."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(cls._ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = cls._parse(f.name, raw)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def _parse(cls, name: str, raw: str) -> object:
        default = getattr(cls(), name)
        if isinstance(default, bool):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ConfigError(f"WHISPR_{name.upper()} must be true or false, got {raw!r}")
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(default, int):
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"WHISPR_{name.upper()} must be a whole number, got {raw!r}") from None
        if isinstance(default, float):
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"WHISPR_{name.upper()} must be a number, got {raw!r}") from None
        if isinstance(default, tuple):
            return _split(raw)
        if isinstance(default, Path):
            return Path(raw)
        return raw

    def with_dev_defaults(self) -> Settings:
        """In dev mode, fill the JWT secret and API key from files under `data_dir` (created once, 0600)."""
        if not self.dev:
            return self
        changes: dict[str, object] = {}
        if self.jwt_algorithm == "HS256" and not self.jwt_secret:
            changes["jwt_secret"] = _dev_secret(self.data_dir / "dev-jwt-secret")
        if not self.api_key:
            changes["api_key"] = _dev_secret(self.data_dir / "dev-api-key")
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'whispr.db'}"

    @property
    def resolved_log_format(self) -> str:
        return self.log_format or ("text" if self.dev else "json")

    def validate(self) -> None:
        """Raise ConfigError naming the first wrong setting."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.resolved_log_format not in {"text", "json"}:
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if self.jwt_algorithm not in {"HS256", "RS256", "ES256", "EdDSA"}:
            raise ConfigError(f"jwt_algorithm must be HS256, RS256, ES256 or EdDSA, got {self.jwt_algorithm!r}")
        if self.jwt_algorithm == "HS256" and not self.jwt_secret:
            raise ConfigError("HS256 needs WHISPR_JWT_SECRET (32+ bytes); or run with --dev")
        if self.jwt_algorithm != "HS256" and not self.jwt_public_keys:
            raise ConfigError(f"{self.jwt_algorithm} needs WHISPR_JWT_PUBLIC_KEYS (a PEM or JWKS file)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both WHISPR_TLS_CERT and WHISPR_TLS_KEY")
        url = self.resolved_store_url
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(f"store_url must start with sqlite:/// or postgresql://, got {url!r}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://", CLUSTER_SCHEME)):
            scheme = self.redis_url.split(":", 1)[0]
            raise ConfigError(
                f"redis_url must start with redis://, rediss://, unix:// or {CLUSTER_SCHEME}, got {scheme!r}"
            )
        if is_cluster_url(self.redis_url):
            try:
                parse_cluster_url(self.redis_url)
            except ValueError as exc:
                raise ConfigError(f"redis_url: {exc}") from None
        for name in ("connections_per_ip", "connects_per_5min", "messages_per_minute", "joins_per_minute"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_content_bytes < 1:
            raise ConfigError(f"max_content_bytes must be at least 1, got {self.max_content_bytes}")
        if self.idle_timeout <= 0:
            raise ConfigError(f"idle_timeout must be positive, got {self.idle_timeout}")
        if self.shutdown_grace <= 0:
            raise ConfigError(f"shutdown_grace must be positive, got {self.shutdown_grace}")
        for name in ("max_connections", "max_loop_lag", "max_rss", "overload_retry_after"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def _dev_secret(path: Path) -> str:
    """The secret stored at `path`, created with 48 random url-safe characters on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(36)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
