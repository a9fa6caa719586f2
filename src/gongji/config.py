"""Configuration from the environment (prefix GONGJI_), with the defaults `make run` needs."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gongji import limits
from gongji.logs import LogFormat

_KEY_ID = re.compile(r"[A-Za-z0-9]{1,16}")


class CannotListen(Exception):
    """An address gongji must listen on is taken, or not one of this host's. The message names the
    address and the setting to change; `gongji serve` prints it as one line and exits 1."""

    def __init__(self, what: str, listen: str, setting: str, cause: str) -> None:
        super().__init__(
            f"cannot listen for {what} on {listen} ({cause}): is another gongji serving? Stop it, or set {setting}"
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GONGJI_", extra="ignore")

    # PostgreSQL. Unset: an embedded server is started with its data under data_dir.
    database_url: SecretStr | None = None
    data_dir: Path = Path(".gongji")
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=200)
    db_command_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # At start, how long to keep trying a database that cannot be reached yet (refused, name not
    # resolved, still starting up) before giving up with exit code 1. 0: give up at once.
    db_start_wait_s: float = Field(default=120.0, ge=0, le=3600)
    # asyncpg's per-connection cache of named prepared statements. 0 behind PgBouncer < 1.21 in
    # transaction mode, which cannot route named statements; a newer PgBouncer with
    # max_prepared_statements set keeps them (deploy/README.md).
    db_statement_cache_size: int = Field(default=256, ge=0, le=10_000)
    # Migrations take a session advisory lock, which a transaction-mode pooler cannot hold: behind
    # PgBouncer, point this at PostgreSQL itself. Unset: migrations use database_url.
    migrate_database_url: SecretStr | None = None
    # The one connection per server process that LISTENs for credential changes (revocations reach
    # the credential cache through it). LISTEN belongs to a session, which PgBouncer in transaction
    # mode does not keep: behind it, point this at PostgreSQL itself. Unset: database_url.
    listen_database_url: SecretStr | None = None

    # gRPC and metrics listen addresses.
    grpc_listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    # A second, plaintext listener that serves grpc.health.v1 and nothing else: for `gongji health`
    # (the container HEALTHCHECK) and Kubernetes' gRPC probes, neither of which can present a client
    # certificate, while the gRPC port speaks TLS or mTLS only. Empty: off.
    health_listen: str = ""
    grace_period_s: float = Field(default=10.0, ge=0, le=120)
    max_concurrent_rpcs: int = Field(default=limits.GRPC_CONCURRENT_RPCS_MAX, ge=1, le=100_000)
    # How long a call's request message may take to follow its headers (limits.py).
    request_message_wait_s: float = Field(default=limits.REQUEST_MESSAGE_WAIT_S, gt=0, le=60)

    # How often each server runs the 医保钱包 expiry work (returning unaccepted transfers past their due
    # time); it also runs once at start, catching up on what came due while gongji was down.
    wallet_expiry_interval_s: float = Field(default=30.0, gt=0, le=3600)

    # How long events are kept for consumers (docs/events.md): older ones are deleted, and a consumer whose
    # cursor is before them is told CURSOR_EXPIRED.
    events_retention_days: int = Field(default=30, ge=1, le=3650)

    # TLS: certificate chain and key (PEM). With a client CA too: mTLS, a client certificate is required.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # E-voucher signing: at least 32 bytes. Unset: a key is generated once and kept in data_dir.
    voucher_key: SecretStr | None = None
    voucher_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9]{1,16}$")
    voucher_ttl_s: int = Field(default=limits.VOUCHER_TTL_S_DEFAULT, ge=5, le=limits.VOUCHER_TTL_S_MAX)
    # Rotation: keys that still verify but no longer sign, "id:key,id:key". Keep a retired key for at
    # least the longest voucher lifetime (VOUCHER_TTL_S_MAX) after the new one starts signing.
    voucher_old_keys: SecretStr | None = None

    # Ledger checkpoints (gongji.checkpoints): the Ed25519 key that signs them, as the base64 of its
    # 32-byte private key. Unset: a key is generated once and kept in data_dir. `gongji checkpoint
    # --public-key` prints the public half, which is all a verifier needs.
    checkpoint_key: SecretStr | None = None
    checkpoint_key_id: str = Field(default="c1", pattern=r"^[A-Za-z0-9]{1,16}$")

    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # json: one object per line, for log shippers; text: for people (`make run` sets it).
    log_format: LogFormat = "json"

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GONGJI_TLS_CERT_FILE and GONGJI_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("GONGJI_TLS_CLIENT_CA_FILE (mTLS) needs GONGJI_TLS_CERT_FILE and GONGJI_TLS_KEY_FILE")
        if self.health_listen:
            try:
                health_port = host_port(self.health_listen)[1]
            except ValueError as exc:
                raise ValueError("GONGJI_HEALTH_LISTEN is host:port, or empty (off)") from exc
            if health_port != 0 and health_port == host_port(self.grpc_listen)[1]:
                raise ValueError("GONGJI_HEALTH_LISTEN needs a port of its own, not GONGJI_GRPC_LISTEN's")
        return self

    def listen_url(self) -> str | None:
        """Where the credential listener connects; None: nowhere (no URL known)."""
        # The migration URL next: it must reach PostgreSQL itself, never a transaction pooler, where
        # LISTEN would succeed and no notification arrive.
        url = self.listen_database_url or self.migrate_database_url or self.database_url
        return url.get_secret_value() if url is not None else None

    def voucher_keys(self) -> dict[str, bytes]:
        """Every key that verifies e-vouchers: the current one and the retired ones still accepted."""
        keys = {self.voucher_key_id: self.voucher_key_bytes()}
        text = self.voucher_old_keys.get_secret_value() if self.voucher_old_keys else ""
        for entry in filter(None, (e.strip() for e in text.split(","))):
            key_id, sep, key = entry.partition(":")
            if not sep or not _KEY_ID.fullmatch(key_id) or key_id in keys:
                raise ValueError("GONGJI_VOUCHER_OLD_KEYS: entries are 'id:key' with distinct alphanumeric ids")
            if len(key.encode()) < 32:
                raise ValueError("GONGJI_VOUCHER_OLD_KEYS: every key must be at least 32 bytes")
            keys[key_id] = key.encode()
        return keys

    def voucher_key_bytes(self) -> bytes:
        """The configured key, or one generated on first use and kept (mode 0600) under data_dir."""
        text = self._key_text(self.voucher_key, "voucher.key", lambda: secrets.token_urlsafe(48))
        assert text is not None  # made when there was none
        key = text.encode()
        if len(key) < 32:
            raise ValueError("GONGJI_VOUCHER_KEY must be at least 32 bytes")
        return key

    def checkpoint_key_bytes(self, *, create: bool = True) -> bytes:
        """The 32 bytes of the checkpoint signing key: configured, or generated on first use and kept
        (mode 0600) under data_dir. Without `create`, a key that is neither configured nor kept is a
        ValueError: a verifier must not make a key of its own, which would refuse every checkpoint."""
        new = (lambda: base64.b64encode(os.urandom(32)).decode()) if create else None
        text = self._key_text(self.checkpoint_key, "checkpoint.key", new)
        if text is None:
            raise ValueError(
                "no checkpoint key here (GONGJI_CHECKPOINT_KEY unset, none kept in the data directory):"
                " pass --public-key ID:KEY, as `gongji checkpoint --public-key` prints it where the key is"
            )
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except binascii.Error:
            key = b""
        if len(key) != 32:
            raise ValueError("GONGJI_CHECKPOINT_KEY is the base64 of 32 bytes (an Ed25519 private key)")
        return key

    def _key_text(self, configured: SecretStr | None, name: str, new: Callable[[], str] | None) -> str | None:
        """A key as configured, else the one kept in data_dir/`name`, written there first from `new()` when
        there is none yet (None: none is made, and None is answered)."""
        if configured is not None:
            return configured.get_secret_value()
        path = self.data_dir / name
        if not path.exists():
            if new is None:
                return None
            _create_key_file(path, new())
        return path.read_text().strip()


def _create_key_file(path: Path, key: str) -> None:
    """Write `key` to `path` (mode 0600) atomically: a process reading it at the same moment sees either
    no file or the whole key, never an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created with mode 0600
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.replace(tmp, path)


def host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
