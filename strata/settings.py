"""Runtime settings: one pydantic-settings object, environment prefix ``STRATA_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_N_BUCKETS = 256


class Settings(BaseSettings):
    """Where data lives and how to reach services. Every field has an env var ``STRATA_<NAME>``.

    Attributes:
        data: data root (local path or any pyarrow filesystem URI such as ``s3://bucket/strata``)
            holding ``warehouse/``, ``rejects/``, ``snapshots/``, ``models/``.
        redis_url: external Redis; unset means an embedded redis-server on a free local port.
        pseudonym_key: the HMAC key for user ids (text, at least 16 characters). Unset: read
            ``key_file``, creating it with a random key on first use. Never stored with the data.
        key_file: where the local pseudonymisation key is kept when ``pseudonym_key`` is unset.
        n_buckets: user buckets of a new warehouse (an existing one keeps its own).
        ray_address: Ray cluster to join (``auto``, ``ray://host:10001``); unset starts local Ray.
        num_cpus: CPUs for a local Ray (unset: all).
    """

    model_config = SettingsConfigDict(env_prefix="STRATA_", extra="ignore")

    data: str = "./data"
    redis_url: str | None = None
    pseudonym_key: SecretStr | None = None
    key_file: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "strata" / "pseudonym.key"
    )
    n_buckets: int = Field(default=DEFAULT_N_BUCKETS, ge=1, le=65536)
    ray_address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
