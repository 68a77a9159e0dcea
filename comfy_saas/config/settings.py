"""Every setting of the service and its tools, read once from the environment (locally) or Modal Secrets.

One prefix scheme: a top-level field `x_y` is `COMFY_X_Y`; a field of a section is
`COMFY_<SECTION>_<FIELD>` (`COMFY_LIMIT_MAX_MEDIA_BYTES`, `COMFY_R2_BUCKET`, `COMFY_COMFYUI_URL`,
`COMFY_TWIN_PROFILE`, `COMFY_CLIENT_API_KEY`). Durations carry their unit in the name. Nothing else in
the project reads os.environ: `environment()` below is the one door.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from comfy_saas.config.pools import NAME as POOL_NAME
from comfy_saas.config.pools import PoolSpec, parse_pool_gpus, parse_pools
from comfy_saas.inputs import IDENTIFIER, matches

ENV_PREFIX = "COMFY_"
# Modal keeps a Dict entry 7 days after its last read or write; records cannot be kept longer.
DICT_ENTRY_TTL_DAYS = 7


def opt(default: Any, help: str) -> Any:
    """A settings field with its one-line description (shown in `comfy-saas config` and the README)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def secret(help: str) -> Any:
    """A settings field holding a credential: kept out of reprs (and so out of logs)."""
    return field(default="", repr=False, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "section": True})


@dataclass(frozen=True)
class Limits:
    """Caps enforced at the edge on every submission."""

    max_workflow_nodes: int = opt(2_000, "nodes in one workflow")
    max_workflow_bytes: int = opt(4 * 1024 * 1024, "size of a workflow as JSON")
    max_media_items: int = opt(16, "media items per job")
    max_media_bytes: int = opt(25 * 1024 * 1024, "size of one media item")
    max_media_total_bytes: int = opt(64 * 1024 * 1024, "base64 media of one job, decoded")
    max_overrides: int = opt(256, "overrides per job")
    max_metadata_keys: int = opt(32, "metadata keys per job")
    max_metadata_bytes: int = opt(8 * 1024, "metadata as JSON")
    max_url_length: int = opt(2_048, "length of a media or webhook URL")
    max_timeout_s: int = opt(24 * 3600, "longest timeout_s a job may ask for (a pool's own cap, set from its "
                                          "worker timeout in COMFY_POOLS, may be lower)")
    max_models: int = opt(8, "model files (checkpoints, LoRAs, ...) one job may name by URL")
    max_body_bytes: int = opt(100 * 1024 * 1024, "size of a request body")
    max_asset_bytes: int = opt(100 * 1024 * 1024, "size of one Comfy API v2 asset upload")
    max_json_depth: int = opt(64, "nesting of arrays and objects in a request body")
    refused_drain_bytes: int = opt(128 * 1024 * 1024, "a body refused unread (no key, too large) is read and "
                                                       "dropped up to this size after the answer, so a client "
                                                       "still sending sees it (a larger declared body is not)")
    refused_drain_s: float = opt(30.0, "and for at most this long")
    max_userdata_files: int = opt(1_000, "files one user keeps in the editor (saved workflows, settings, ...)")
    max_userdata_bytes: int = opt(16 * 1024 * 1024, "size of one of the editor's user files")


@dataclass(frozen=True)
class R2Config:
    """Where outputs go on Cloudflare R2 (or any S3-compatible store)."""

    bucket: str = opt("", "bucket for outputs and large inputs")
    endpoint_url: str = opt("", "https://<account>.r2.cloudflarestorage.com")
    region: str = opt("auto", "R2's region is always auto")
    access_key_id: str = secret("R2 access key id")
    secret_access_key: str = secret("R2 secret access key")
    multipart_threshold_bytes: int = opt(16 * 1024 * 1024, "uploads above this go multipart, in parts this size")


@dataclass(frozen=True)
class ComfyUISource:
    """Where local workers find ComfyUI (on Modal the image holds it)."""

    url: str = opt("", "use a running ComfyUI at this URL")
    dir: str = opt("", "launch ComfyUI from this directory (else the built-in stand-in)")
    python: str = opt("", "the interpreter of a launched ComfyUI (its own venv, with torch)")
    args: str = opt("", "extra ComfyUI command-line flags, e.g. --cpu")
    models_dir: str = opt("", "with a ComfyUI at a URL: a models folder tree it reads (an extra model path) where "
                              "job models are linked; launched ComfyUIs get their own")
    base_dir: str = opt("", "with url: that ComfyUI's base directory on this machine, so each job's files are "
                            "deleted from its input/output/temp folders after upload")


@dataclass(frozen=True)
class ModelCacheConfig:
    """The shared cache of model files jobs name by URL (content-addressed by sha256)."""

    dir: str = opt("", "where cached model files live (default <data_dir>/models-cache; on Modal the models Volume)")
    budget_bytes: int = opt(200 * 1024**3, "total size of cached files; least recently used ones are evicted "
                                           "beyond it (never one a running job uses)")
    max_file_bytes: int = opt(40 * 1024**3, "size of one model file")
    download_timeout_s: float = opt(3_600.0, "time to download one model file")
    wait_timeout_s: float = opt(3_600.0, "how long a job waits for another job's download of the same file")
    claim_ttl_s: float = opt(60.0, "a download claim not renewed for this long is taken over")
    poll_s: float = opt(1.0, "how often a waiting job checks a download in progress")


@dataclass(frozen=True)
class TwinConfig:
    """The local twins of modal.Dict and modal.Queue."""

    profile: str = opt("local", "local (fast SQLite) or modal (Modal's latency, expiry and size limits)")
    rpc_ms: float = opt(25.0, "with the modal profile: latency added to every Dict/Queue call")


@dataclass(frozen=True)
class ClientConfig:
    """Defaults of the `comfy-saas` API commands (submit, status, list, cancel)."""

    url: str = opt("http://127.0.0.1:8000", "the API's base URL")
    api_key: str = secret("the API key the commands send")
    modal_app: str = opt("", "use the endpoints of this deployed Modal app (e.g. comfy-saas) instead of url, as "
                             "the deployment reports them (needs Modal credentials)")


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with `Settings.from_env()` once per process."""

    data_dir: Path = opt(Path("data"), "local home: SQLite twins, output files, ComfyUI folders")
    storage_backend: str = opt("local", "local (folder + signed URLs) or s3 (R2)")
    url_signing_secret: str = secret("HMAC key of local download URLs (default: random per data dir)")
    public_base_url: str = opt("", "base of local download URLs (default: the local server's own address)")
    presign_expiry_s: int = opt(3_600, "lifetime of download URLs (R2 caps it at 7 days; longer values are clamped)")
    default_pool: str = opt("default", "pool of jobs that name none")
    api_keys: str = secret("`key` or `key:user_id`, each optionally `@pool1|pool2` (the only pools it may use), "
                            "comma-separated; a bound key sees only its user's jobs")
    allow_anonymous: bool = opt(False, "accept requests without a key while no keys are configured (`comfy-saas "
                                       "serve` turns it on when COMFY_API_KEYS is empty)")
    max_attempts: int = opt(3, "attempts per job before a lost worker fails it")
    heartbeat_stale_s: float = opt(60.0, "a running job silent this long has lost its worker")
    heartbeat_interval_s: float = opt(5.0, "how often a worker reports a running job")
    cancel_poll_s: float = opt(0.5, "how often a worker checks the cancel flag")
    job_timeout_s: int = opt(3_600, "run time of a job that names none")
    queue_timeout_s: int = opt(6 * 3_600, "longest a job may wait for a worker")
    retention_days: int = opt(7, "finished jobs and their files are deleted after this")
    private_url_allowlist: str = opt("", "CIDRs media and webhook URLs may reach although private")
    media_fetch_timeout_s: float = opt(30.0, "time to fetch one media URL")
    url_check_timeout_s: float = opt(5.0, "time to resolve the hosts of a submission's media and webhook URLs")
    webhook_secret: str = secret("Standard Webhooks secret (whsec_...); locally derived per data dir")
    webhook_max_attempts: int = opt(8, "attempts per webhook delivery")
    webhook_backoff_s: float = opt(30.0, "first retry delay, doubling (8 attempts span about an hour)")
    webhook_timeout_s: float = opt(10.0, "time a receiver has to answer")
    warmup_workflow: str = opt("", "workflow file each worker runs once before its first job")
    max_active_jobs: int = opt(0, "queued + running jobs allowed at once (0: no cap)")
    max_active_jobs_per_user: int = opt(0, "the same per user (0: no cap)")
    max_wait_s: float = opt(50.0, "longest ?wait=N a request may ask for; keep it below the endpoint timeout (60 s)")
    max_templates: int = opt(200, "workflow templates per owner (each user, and the shared set)")
    native_max_sockets_per_key: int = opt(16, "native /ws sockets one API key may hold open at once on one "
                                              "server process (each polls the store); more are closed with 1013")
    v2_max_streams_per_key: int = opt(16, "Comfy API v2 event streams one API key may hold open at once on one "
                                          "server process (each polls the store); more get 429 too_many_streams")
    native_socket_max_s: float = opt(3600.0, "a native /ws socket is closed (1001) after this long; ComfyUI's "
                                             "clients reconnect")
    hf_token: str = secret("Hugging Face token, sent only to huggingface.co and *.hf.co over https")
    civitai_token: str = secret("Civitai API token, sent only to civitai.com (and its subdomains) over https")
    gpu_config: str = opt("", "at deploy time: the default pool's GPU types in fallback order, comma-separated, "
                              "instead of deploy.toml's (shorthand for its COMFY_POOL_GPUS entry)")
    pools: str = opt("default", "pools a job may name, comma-separated, each `name[:floor=N][:ceiling=N]"
                                "[:max_timeout_s=N]`; on Modal written from deploy.toml at deploy")
    pool_gpus: str = opt("", "at deploy time: per-pool GPU lists replacing deploy.toml's, `pool=GPU,GPU;pool2=GPU`")
    drain_lease_s: float = opt(120.0, "a running drain renews its slot every third of this; a slot not renewed "
                                      "for this long is free again (its container died)")
    drain_start_grace_s: float = opt(900.0, "a spawned drain that has not started after this long is counted lost")
    limits: Limits = section(Limits, "COMFY_LIMIT_*")
    r2: R2Config = section(R2Config, "COMFY_R2_*")
    comfyui: ComfyUISource = section(ComfyUISource, "COMFY_COMFYUI_*")
    model_cache: ModelCacheConfig = section(ModelCacheConfig, "COMFY_MODEL_CACHE_*")
    twin: TwinConfig = section(TwinConfig, "COMFY_TWIN_*")
    client: ClientConfig = section(ClientConfig, "COMFY_CLIENT_*")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `COMFY_*` variables (unset ones keep their defaults); keyword overrides win (CLI flags)."""
        env = environment() if env is None else env
        values = _read(cls, env, ENV_PREFIX)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        # Absolute once: ComfyUI runs in its own folder, and model links must point the same from anywhere.
        return replace(settings, data_dir=Path(settings.data_dir).resolve())

    def check(self) -> None:
        """Refuse combinations that cannot work, with a message naming the variable."""
        if self.storage_backend not in {"local", "s3"}:
            raise ValueError(f"COMFY_STORAGE_BACKEND={self.storage_backend!r}: use local or s3")
        if self.twin.profile not in {"local", "modal"}:
            raise ValueError(f"COMFY_TWIN_PROFILE={self.twin.profile!r}: use local or modal")
        if self.retention_days < 1:
            raise ValueError("COMFY_RETENTION_DAYS must be at least 1")
        if self.model_cache.poll_s <= 0 or self.model_cache.claim_ttl_s <= 0:
            raise ValueError("COMFY_MODEL_CACHE_POLL_S and COMFY_MODEL_CACHE_CLAIM_TTL_S must be positive")
        parse_api_keys(self.api_keys)
        self.pool_table()

    def model_cache_dir(self) -> Path:
        """Where cached model files live: COMFY_MODEL_CACHE_DIR, else <data_dir>/models-cache."""
        return (Path(self.model_cache.dir) if self.model_cache.dir else self.data_dir / "models-cache").resolve()

    def pool_table(self) -> dict[str, PoolSpec]:
        """The pools jobs may name (COMFY_POOLS), with the default pool always among them (parsed once per
        spec: every submit asks)."""
        return dict(_pool_table(self.pools, self.pool_gpus, self.default_pool))

    def check_retention(self, entries_expire: bool) -> None:
        """Records live at most 7 days after their last use on Modal: a longer retention cannot be honoured."""
        if entries_expire and self.retention_days > DICT_ENTRY_TTL_DAYS:
            raise ValueError(f"COMFY_RETENTION_DAYS={self.retention_days}: Modal expires a job record "
                             f"{DICT_ENTRY_TTL_DAYS} days after its last read or write, so jobs cannot be kept "
                             f"longer; set it to {DICT_ENTRY_TTL_DAYS} or less")


class ApiKey(NamedTuple):
    key: str
    user: str | None = None
    pools: tuple[str, ...] | None = None


@functools.lru_cache(maxsize=16)
def _pool_table(pools_spec: str, gpus_spec: str, default_pool: str) -> dict[str, PoolSpec]:
    try:
        pools = parse_pools(pools_spec)
        parse_pool_gpus(gpus_spec)
    except ValueError as exc:
        raise ValueError(f"COMFY_POOLS / COMFY_POOL_GPUS: {exc}") from None
    if default_pool not in pools:
        raise ValueError(f"COMFY_DEFAULT_POOL={default_pool!r} is not in COMFY_POOLS ({', '.join(pools)})")
    return pools


def parse_api_keys(spec: str) -> list[ApiKey]:
    """COMFY_API_KEYS: `key`, `key:user`, `key@pool1|pool2` or `key:user@pool1|pool2`, comma-separated. The text
    after the last `@` is a pool list when it is made of pool names, so a user id like `alice@example.com` stays
    whole. ValueError for an entry that would be read wrongly: `key:` (an empty user must not become an
    unbound admin key), `:user`, a bad user id."""
    keys = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        head, at, tail = part.rpartition("@")
        pools = tuple(tail.split("|")) if at and all(POOL_NAME.match(p) for p in tail.split("|")) else None
        key, sep, user = (head if pools else part).partition(":")
        if not key or (sep and not matches(IDENTIFIER, user)):
            raise ValueError(f"COMFY_API_KEYS entry #{len(keys) + 1} must be `key` or `key:user_id` (optionally "
                             "`@pool|pool`), with a non-empty key and a user id of letters, digits and _ . : @ -")
        keys.append(ApiKey(key, user if sep else None, pools))
    return keys


def environment() -> Mapping[str, str]:
    """The process environment (Modal Secrets arrive here too)."""
    return os.environ


def _read(cls: type, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("section"):
            sub = f.default_factory  # type: ignore[misc]
            out[f.name] = sub(**_read(sub, env, f"{prefix}{_section_name(f.name)}_"))
            continue
        raw = env.get(prefix + f.name.upper())
        if raw is not None:
            out[f.name] = _convert(raw, _default(f), prefix + f.name.upper())
    return out


def _section_name(name: str) -> str:
    return {"limits": "LIMIT"}.get(name, name.upper())


def _default(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def _convert(raw: str, default: Any, name: str) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, int | float):
            return type(default)(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a {type(default).__name__}") from None
    return raw


def describe(cls: type = Settings, prefix: str = ENV_PREFIX) -> Iterator[tuple[str, Any, str]]:
    """(variable, default, help) for every setting, sections included: the README's table."""
    for f in fields(cls):
        if f.metadata.get("section"):
            yield from describe(f.default_factory, f"{prefix}{_section_name(f.name)}_")  # type: ignore[misc]
        elif not is_dataclass(_default(f)):
            yield prefix + f.name.upper(), _default(f), f.metadata.get("help", "")
