"""Runtime settings: one pydantic-settings object, environment prefix ``STRATA_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.io.paths import is_remote, local_path
from strata.online.keys import check_namespace

DEFAULT_N_BUCKETS = 256


class Settings(BaseSettings):
    """Where data lives and how to reach services. Every field has an env var ``STRATA_<NAME>``.

    Attributes:
        data: data root (local path or any pyarrow filesystem URI such as ``s3://bucket/strata``)
            holding ``warehouse/``, ``rejects/``, ``snapshots/``, ``models/``.
        redis_url: external Redis; unset means an embedded redis-server on a free local port.
        redis_mode: ``standalone`` (one server, the default) or ``cluster`` (a Redis Cluster;
            ``redis_url`` names any node). Read by :mod:`strata.io.redis_client` from
            ``STRATA_REDIS_MODE`` where a store is given a URL.
        redis_namespace: prefix of every Redis key strata writes or reads (letters, digits and
            ``._:-``): the recompute publishes under it and the API reads under it.
        pseudonym_key: the HMAC key for user ids (text, at least 16 characters). Unset: read
            ``key_file``, creating it with a random key on first use. Never stored with the data.
        key_file: where the local pseudonymisation key is kept when ``pseudonym_key`` is unset.
        n_buckets: user buckets of a new warehouse (an existing one keeps its own).
        ray_address: Ray cluster to join (``auto``, ``ray://host:10001``); unset starts local Ray.
        num_cpus: CPUs for a local Ray (unset: all).
        api_keys: API key records as JSON (``[{"name", "scopes", "sha256"}, ...]``: hashes
            only, never the keys), added to those in ``api_keys_file``.
        api_keys_file: the key file ``strata keys`` maintains (default ``<data>/api_keys.json``
            for a local data root).
    """

    model_config = SettingsConfigDict(env_prefix="STRATA_", extra="ignore")

    data: str = "./data"
    redis_url: str | None = None
    redis_mode: Literal["standalone", "cluster"] = "standalone"
    redis_namespace: str = "strata"
    pseudonym_key: SecretStr | None = None
    key_file: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "strata" / "pseudonym.key"
    )
    n_buckets: int = Field(default=DEFAULT_N_BUCKETS, ge=1, le=65536)
    ray_address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    api_keys: str | None = None
    api_keys_file: Path | None = None

    @field_validator("redis_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_namespace(value)

    def keys_path(self) -> Path | None:
        """The API key file: ``api_keys_file``, else ``<data>/api_keys.json`` when the data
        root is a local folder, else None (keys then come from ``STRATA_API_KEYS`` only)."""
        if self.api_keys_file is not None:
            return self.api_keys_file
        if is_remote(self.data):
            return None
        return Path(local_path(self.data)) / "api_keys.json"
