"""Every tunable of the service, read once from the environment (locally) or Modal Secrets (deployed).

Durations carry their unit in the name. Nothing else in the project reads os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Caps enforced at the edge on every submission."""

    max_workflow_nodes: int = 2_000
    max_workflow_bytes: int = 4 * 1024 * 1024
    max_media_items: int = 16
    max_media_bytes: int = 25 * 1024 * 1024
    max_media_total_bytes: int = 64 * 1024 * 1024
    max_overrides: int = 256
    max_metadata_keys: int = 32
    max_metadata_bytes: int = 8 * 1024
    max_url_length: int = 2_048
    max_string_length: int = 256
    max_timeout_s: int = 24 * 3600
    max_body_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class S3Config:
    """Where outputs go on R2 (or any S3-compatible store)."""

    bucket: str = ""
    endpoint_url: str | None = None
    region: str = "auto"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    multipart_threshold_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with `Settings.from_env()` once per process."""

    data_dir: Path = Path("data")
    storage_backend: str = "local"  # "local" (filesystem, signed URLs) or "s3" (R2)
    s3: S3Config = field(default_factory=S3Config)
    url_signing_secret: str = ""
    public_base_url: str = "http://127.0.0.1:8000"
    presign_expiry_s: int = 3_600
    default_pool: str = "default"
    # "key" or "key:user_id", comma-separated; a key bound to a user sees only that user's jobs.
    api_keys: str = ""
    require_auth: bool = True
    max_attempts: int = 3
    heartbeat_stale_s: float = 60.0
    job_timeout_s: int = 3_600
    queue_timeout_s: int = 6 * 3_600
    queue_put_timeout_s: float = 2.0
    retention_days: int = 7
    # CIDRs a media or webhook URL may resolve to although private/loopback (tests, trusted LANs).
    private_url_allowlist: str = ""
    media_fetch_timeout_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    # Standard Webhooks signing secret ("whsec_<base64>" or any string); empty locally = derived per data dir.
    webhook_secret: str = ""
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 30.0  # first retry after ~30 s, doubling: 8 attempts span about an hour
    webhook_timeout_s: float = 10.0
    # An API-format workflow file each worker runs once before taking jobs (warm caches, loaded models).
    warmup_workflow: str = ""
    # Back-pressure: active (queued + running) jobs allowed at once; 0 means no cap.
    max_active_jobs: int = 0
    max_active_jobs_per_user: int = 0
    cancel_poll_s: float = 0.5
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read `COMFY_*`, `R2_*` variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        top = _typed_overrides(cls, env, "COMFY_", skip={"s3", "limits"})
        s3 = S3Config(**_typed_overrides(S3Config, env, "R2_"))
        limits = Limits(**_typed_overrides(Limits, env, "COMFY_LIMIT_"))
        return cls(s3=s3, limits=limits, **top)


def _typed_overrides(cls: type, env: Mapping[str, str], prefix: str, skip: frozenset | set = frozenset()
                     ) -> dict[str, Any]:
    """Values for `cls`'s fields found in env as PREFIX+FIELD_NAME, converted to the default's type."""
    out: dict[str, Any] = {}
    defaults = cls()
    for f in fields(cls):
        raw = env.get(prefix + f.name.upper())
        if f.name in skip or raw is None:
            continue
        out[f.name] = _convert(raw, getattr(defaults, f.name), prefix + f.name.upper())
    return out


def _convert(raw: str, default: Any, name: str) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, int | float):
            return type(default)(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a {type(default).__name__}") from exc
    return raw
