"""Where job outputs live: Cloudflare R2 (any S3 API) in production, a folder with signed URLs locally.

Both speak the same small interface: upload a file or bytes under a key with its content type, make a
download URL that expires, and delete everything under a job's prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import mimetypes
import os
import shutil
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlencode

from comfy_saas.config import R2Config, Settings
from comfy_saas.errors import BackendError, InvalidInput

_EXTRA_TYPES = {
    ".webp": "image/webp", ".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime",
    ".gif": "image/gif", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".wav": "audio/wav",
    ".ogg": "audio/ogg", ".opus": "audio/opus", ".txt": "text/plain", ".json": "application/json",
    ".glb": "model/gltf-binary", ".safetensors": "application/octet-stream", ".latent": "application/octet-stream",
}


def guess_content_type(filename: str) -> str:
    """A Content-Type from the file name, application/octet-stream when unknown."""
    ext = PurePosixPath(filename).suffix.lower()
    return _EXTRA_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def check_key(key: str) -> str:
    """Refuse keys that could escape a job's folder: absolute, `..`, backslashes, empty parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in {"", ".", ".."} for p in parts):
        raise InvalidInput(f"unsafe object key {key!r}", field="key")
    return key


class ObjectStore(Protocol):
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> int: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int: ...
    def url(self, key: str, expires_s: int | None = None) -> str: ...
    def read(self, key: str) -> bytes: ...
    def read_if_exists(self, key: str) -> bytes | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def expect(self, prefix: str) -> None: ...  # objects under prefix follow soon (a hint; may do nothing)


# R2 caps a presigned URL at 7 days (longer ones are refused with 400 InvalidArgument).
PRESIGN_MAX_S = 7 * 24 * 3600
# R2 (like S3) wants every multipart part but the last at least 5 MiB, and all of them the same size.
PART_MIN_BYTES = 5 * 1024 * 1024


def r2_client_config() -> Any:
    """boto3's client config the way Cloudflare documents it for R2: SigV4 in region "auto", path-style
    addressing, and checksums only where an operation requires one. boto3 >= 1.36 otherwise adds a CRC32 to
    every upload (over https as an aws-chunked trailer), which R2 refuses (Unauthorized / NotImplemented)."""
    from botocore.config import Config

    return Config(signature_version="s3v4", region_name="auto", s3={"addressing_style": "path"},
                  request_checksum_calculation="when_required", response_checksum_validation="when_required",
                  retries={"max_attempts": 5, "mode": "standard"},
                  connect_timeout=10)  # boto's 60 s would let one unreachable endpoint outlast a web request


class S3Store:
    """R2 through boto3: streamed multipart uploads (equal parts), presigned GETs (at most 7 days), prefix
    deletes (1,000 keys per request)."""

    def __init__(self, config: R2Config, expiry_s: int = 3600) -> None:
        if not config.bucket:
            raise ValueError("COMFY_R2_BUCKET is not set")
        if config.multipart_threshold_bytes < PART_MIN_BYTES:
            raise ValueError(f"COMFY_R2_MULTIPART_THRESHOLD_BYTES must be at least {PART_MIN_BYTES} (R2's smallest "
                             f"multipart part)")
        self.config = config
        self.bucket = config.bucket
        self.expiry_s = expiry_s
        self._client_obj: Any = None

    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            import boto3  # heavy: only where outputs are really uploaded

            self._client_obj = boto3.client(
                "s3", endpoint_url=self.config.endpoint_url or None, region_name=self.config.region,
                aws_access_key_id=self.config.access_key_id or None,
                aws_secret_access_key=self.config.secret_access_key or None, config=r2_client_config(),
            )
        return self._client_obj

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        # One fixed chunk size: s3transfer then cuts equal parts (only the last is shorter), as R2 requires.
        threshold = self.config.multipart_threshold_bytes
        return TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> int:
        """Upload a file (multipart above the threshold); its size in bytes."""
        with open(path, "rb") as f:
            self._put_stream(key, f, content_type)
        return os.path.getsize(path)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        import io

        self._put_stream(key, io.BytesIO(data), content_type)
        return len(data)

    def expect(self, prefix: str) -> None:
        """R2 has no folders to make: nothing to do."""

    def _put_stream(self, key: str, stream: BinaryIO, content_type: str | None) -> None:
        extra = {"ContentType": content_type or guess_content_type(key)}
        try:
            self._client.upload_fileobj(stream, self.bucket, check_key(key), ExtraArgs=extra,
                                        Config=self._transfer_config())
        except Exception as exc:  # botocore's tree is wide; callers need one error
            raise BackendError(f"upload of {key!r} failed: {exc}") from exc

    def url(self, key: str, expires_s: int | None = None) -> str:
        """A presigned GET, valid for expires_s (clamped to R2's 1 s .. 7 days)."""
        expires = min(max(1, int(expires_s or self.expiry_s)), PRESIGN_MAX_S)
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=expires)

    def read(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"].read()

    def read_if_exists(self, key: str) -> bytes | None:
        """The object's bytes, None when there is none (other errors are a BackendError)."""
        from botocore.exceptions import ClientError

        check_key(key)  # an unsafe key is the caller's 4xx, not a storage outage
        try:
            return self.read(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise BackendError(f"reading {key!r} failed: {exc}") from exc
        except Exception as exc:  # connection errors and the like
            raise BackendError(f"reading {key!r} failed: {exc}") from exc

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under prefix (1,000 per request)."""
        check_key(prefix.rstrip("/"))
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        except Exception as exc:  # botocore's tree is wide; callers need one error
            raise BackendError(f"listing {prefix!r} failed: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix, 1,000 per request; how many were deleted."""
        check_key(prefix.rstrip("/"))
        deleted = 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
            for page in pages:
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    resp = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                    if errors := resp.get("Errors"):  # Quiet lists only the objects it failed to delete
                        raise BackendError(f"{len(errors)} objects under {prefix!r} were not deleted: {errors[0]}")
                    deleted += len(objects)
        except BackendError:
            raise
        except Exception as exc:  # botocore's tree is wide; callers need one error
            raise BackendError(f"deleting {prefix!r} failed: {exc}") from exc
        return deleted


class LocalStore:
    """Outputs as files under a folder; URLs are HMAC-signed, expire, and are served by the local API."""

    round_trips = False  # a call is a file operation on this machine

    def __init__(self, root: str | Path, secret: str, base_url: str, expiry_s: int = 3600) -> None:
        if not secret:
            raise ValueError("a URL signing secret is required")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret.encode()
        self.base_url = base_url.rstrip("/")
        self.expiry_s = expiry_s

    def path(self, key: str) -> Path:
        # check_key refuses every key that could leave the root, and nothing here makes links, so the path is
        # joined, not resolved: resolving checks each of its ten or so parts on disk (0.1-0.25 ms on this
        # machine, twice on the way to a job's end).
        return self.root.joinpath(*check_key(key).split("/"))

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> int:
        target = self._prepare(key)
        tmp = _part(target)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)  # readers never see half a file
        return target.stat().st_size

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        target = self._prepare(key)
        tmp = _part(target)
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return len(data)

    def _prepare(self, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def expect(self, prefix: str) -> None:
        """Objects under `prefix` follow soon: make their folder now, so the first put does not wait for it (a
        job's output folder is three new directories, 0.6 ms on this machine's disk). Best effort: a put that
        finds no folder makes it."""
        with contextlib.suppress(OSError, InvalidInput):
            self.path(prefix.rstrip("/")).mkdir(parents=True, exist_ok=True)

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, expires_s: int | None = None, now: float | None = None) -> str:
        expires = int((now or time.time()) + (expires_s or self.expiry_s))
        query = urlencode({"expires": expires, "sig": self._signature(check_key(key), expires)})
        return f"{self.base_url}/files/{quote(key)}?{query}"

    def verify(self, key: str, expires: int, sig: str, now: float | None = None) -> bool:
        """True when sig is ours for key and the URL has not expired."""
        if expires < (now or time.time()):
            return False
        return hmac.compare_digest(self._signature(key, expires), sig)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def read_if_exists(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a path through a file, a disk error: storage, not the caller
            raise BackendError(f"reading {key!r} failed: {exc}") from exc

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under prefix, a folder here (files being written, *.part, are not there yet)."""
        folder = self.path(prefix.rstrip("/"))
        try:
            if not folder.is_dir():
                return []
            return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if _whole(p))
        except OSError as exc:
            raise BackendError(f"listing {prefix!r} failed: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if _whole(p))
        shutil.rmtree(folder, ignore_errors=True)  # a write racing the delete may add or move a file meanwhile
        return count


def _whole(path: Path) -> bool:
    """A stored object, not a file still being written."""
    return path.is_file() and not path.name.endswith(".part")


def _part(target: Path) -> Path:
    """A file to write beside target and then move over it; its own per write, as two writers of one key
    (workers publishing the same catalogue) would otherwise move each other's file away."""
    return target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.part")


def object_store(settings: Settings) -> ObjectStore:
    """The store the settings name: "s3" (R2) or "local" (files under data_dir/outputs)."""
    if settings.storage_backend == "s3":
        return S3Store(settings.r2, settings.presign_expiry_s)
    if settings.storage_backend == "local":
        return LocalStore(settings.data_dir / "outputs", settings.url_signing_secret or local_secret(settings),
                          settings.public_base_url or "http://127.0.0.1:8000", settings.presign_expiry_s)
    raise ValueError(f"unknown storage backend {settings.storage_backend!r} (use 'local' or 's3')")


def local_secret(settings: Settings) -> str:
    """A per-data-dir random secret, so signed URLs survive a restart without any configuration."""
    path = settings.data_dir / "url-signing.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex())
    return path.read_text().strip()
