"""What a client submits: the job request, its media and overrides, validated against the edge limits."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from comfy_saas import inputs
from comfy_saas.config import Limits
from comfy_saas.errors import InvalidInput, MalformedBody
from comfy_saas.jobs.model import Job, OutputOptions
from comfy_saas.workflows import files
from comfy_saas.workflows.edits import apply_overrides
from comfy_saas.workflows.ui_graph import count_nodes, is_ui_format

_DATA_URL_PREFIX = re.compile(r"^data:[\w.+\-]+/[\w.+\-]+;base64,")
SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}\Z")

# ComfyUI's model folders a job may add files to (folder_paths.folder_names_and_paths, 0.3.64).
MODEL_FOLDERS = ("audio_encoders", "checkpoints", "clip", "clip_vision", "controlnet", "diffusion_models",
                 "embeddings", "gligen", "hypernetworks", "loras", "model_patches", "photomaker", "style_models",
                 "text_encoders", "unet", "upscale_models", "vae", "vae_approx")
# The extensions ComfyUI lists in those folders (folder_paths.supported_pt_extensions); others stay invisible.
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft")


def _limits(info: ValidationInfo) -> Limits:
    return (info.context or {}).get("limits") or Limits()


def check_url(url: str, limits: Limits) -> str:
    """An absolute http(s) URL within the length cap; the network checks happen where it is fetched."""
    if len(url) > limits.max_url_length:
        raise ValueError(f"URL is longer than {limits.max_url_length} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in {"http", "https"}:
        raise ValueError(f"URL scheme must be http or https, not {inputs.shown(parts.scheme or 'missing')}")
    if not parts.hostname:
        raise ValueError("URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("URL port must be a whole number from 1 to 65535")
    if any(ord(c) < 33 or c == "\x7f" for c in url):
        raise ValueError("URL must not contain spaces or control characters")
    return url


class MediaInput(BaseModel):
    """A file the workflow reads (e.g. LoadImage's `image`), given by URL or as base64."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="File name the workflow refers to, e.g. in LoadImage.image")
    url: str | None = None
    base64: str | None = Field(default=None, description="Base64 bytes, optionally as a data: URL")
    # A stored object's key, set only by a surface that resolved it for this caller (MediaInput.stored): a
    # private attribute, so no request body can name an object key and read another tenant's bytes.
    _object_key: str | None = PrivateAttr(default=None)
    _object_size: int = PrivateAttr(default=0)

    @classmethod
    def stored(cls, name: str, key: str, size: int) -> MediaInput:
        """A media item staged from object storage (e.g. a Comfy API v2 asset the caller owns)."""
        item = cls.model_construct(name=name, url=None, base64=None)
        item._object_key, item._object_size = key, size
        return item

    @property
    def object_key(self) -> str | None:
        return self._object_key

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not inputs.file_name_ok(v):
            raise ValueError("must be a plain file name (letters, digits, space, . _ - ( ); no paths)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_url(v, _limits(info))

    @field_validator("base64")
    @classmethod
    def _b64(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        cap = _limits(info).max_media_bytes
        body = _DATA_URL_PREFIX.sub("", v, count=1)
        if len(body) * 3 // 4 > cap + 2:
            raise ValueError(f"decoded size exceeds the {cap} byte limit")
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("is not valid base64") from exc
        return v

    @model_validator(mode="after")
    def _one_source(self) -> MediaInput:
        if (self.url is None) == (self.base64 is None):
            raise ValueError("give exactly one of url or base64")
        return self

    def decoded(self) -> bytes:
        """The base64 payload as bytes (only for base64 inputs)."""
        return base64.b64decode(_DATA_URL_PREFIX.sub("", self.base64 or "", count=1))

    def decoded_size(self) -> int:
        body = _DATA_URL_PREFIX.sub("", self.base64 or "", count=1)
        return len(body) * 3 // 4 - body.count("=", -2)


class ModelInput(BaseModel):
    """A model file the workflow loads by name (e.g. LoraLoader.lora_name), fetched by URL into the shared cache."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL of the file; Hugging Face and Civitai use the deployment's tokens")
    folder: str = Field(description=f"ComfyUI models folder: {', '.join(MODEL_FOLDERS)}")
    name: str | None = Field(default=None, validate_default=True,
                             description="File name the workflow uses (default: the URL's last path segment)")
    sha256: str | None = Field(default=None, description="Expected sha256 (hex); the download is verified")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        return check_url(v, _limits(info))

    @field_validator("folder")
    @classmethod
    def _folder(cls, v: str) -> str:
        if v not in MODEL_FOLDERS:
            raise ValueError(f"must be one of {', '.join(MODEL_FOLDERS)}")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA256_PATTERN.match(v):
            raise ValueError("must be 64 hexadecimal characters")
        return None if v is None else v.lower()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and "url" not in info.data:
            return None  # the URL itself is refused
        name = v if v is not None else unquote(urlsplit(info.data["url"]).path.rsplit("/", 1)[-1])
        where = "" if v is not None else f"the URL's file name {name!r} is not usable; give a name: "
        if not inputs.file_name_ok(name):
            raise ValueError(f"{where}must be a plain file name (letters, digits, space, . _ - ( ); no paths)")
        if not name.lower().endswith(MODEL_EXTENSIONS):
            raise ValueError(f"{where}must end with one of {' '.join(MODEL_EXTENSIONS)} (ComfyUI lists no other "
                             "model files)")
        return name


class Override(BaseModel):
    """Set one node input before the workflow runs: workflow[node].inputs[input] = value."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=128)
    input: str = Field(min_length=1, max_length=128)
    value: Any

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not inputs.matches(inputs.IDENTIFIER, v):
            raise ValueError("must be a node id: letters, digits and _ . : @ -, starting with a letter or digit")
        return v


def _check_workflow(wf: dict[str, Any], limits: Limits) -> None:
    if is_ui_format(wf):
        return _check_ui_workflow(wf, limits)
    if not wf:
        raise ValueError("is empty; send a ComfyUI API-format graph {node_id: {class_type, inputs}} or a UI-format "
                         "workflow as ComfyUI saves it")
    if "prompt" in wf and len(wf) <= 3 and isinstance(wf["prompt"], dict):
        raise ValueError("looks like a /prompt request body; send the graph inside 'prompt' as the workflow")
    if len(wf) > limits.max_workflow_nodes:
        raise ValueError(f"has {len(wf)} nodes; the limit is {limits.max_workflow_nodes}")
    for node_id, node in wf.items():
        if not inputs.matches(inputs.IDENTIFIER, node_id):
            raise ValueError(f"node id {inputs.shown(node_id)} must be 1-128 letters, digits and _ . : @ -, "
                             "starting with a letter or digit")
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise ValueError(f"node {node_id!r} needs a non-empty string 'class_type' (API format)")
        if not isinstance(node.get("inputs", {}), dict):
            raise ValueError(f"node {node_id!r}: 'inputs' must be an object")
    _check_size(wf, limits)


def _check_ui_workflow(wf: dict[str, Any], limits: Limits) -> None:
    """A UI-format graph (converted at submit): nodes to convert, within the node and size limits."""
    if not wf["nodes"]:
        raise ValueError("is a UI-format workflow with no nodes")
    count = count_nodes(wf)
    if count > limits.max_workflow_nodes:
        raise ValueError(f"has {count} nodes (subgraphs included); the limit is {limits.max_workflow_nodes}")
    _check_size(wf, limits)


def _check_size(wf: dict[str, Any], limits: Limits) -> None:
    size = len(json.dumps(wf, separators=(",", ":")))
    if size > limits.max_workflow_bytes:
        raise ValueError(f"is {size} bytes; the limit is {limits.max_workflow_bytes}")


def check_workflow(wf: dict[str, Any], limits: Limits) -> None:
    """The edge checks of a workflow in either format; InvalidInput naming `workflow`."""
    try:
        _check_workflow(wf, limits)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"workflow: {exc}", field="workflow") from None


class JobRequest(BaseModel):
    """A job submission as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="ComfyUI API-format graph, or a UI-format workflow as ComfyUI "
                                                 "saves it (converted at submit)")
    media: list[MediaInput] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    webhook_url: str | None = None
    user_id: str | None = None
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    pool: str | None = None
    timeout_s: int | None = Field(default=None, ge=1)
    include_previews: bool = False
    webhook_progress: bool = Field(default=False, description="also POST job.progress events (best effort)")
    output: OutputOptions | None = Field(default=None, description="convert still images to png, webp or jpeg")
    # What submit worked out for the job record (format, seeds drawn, template); never sent by clients.
    _recorded: dict[str, Any] = PrivateAttr(default_factory=dict)

    def with_staged(self, media: list[MediaInput]) -> JobRequest:
        """A copy with media a surface resolved (MediaInput.stored) added to the client's own."""
        names = [m.name for m in [*self.media, *media]]
        if len(set(names)) != len(names):
            raise InvalidInput("media: names must be unique (a staged asset has the name of a media item)",
                               field="media")
        copy = self.model_copy(update={"media": [*self.media, *media]})
        copy._recorded = dict(self._recorded)
        return copy

    def with_recorded(self, **fields: Any) -> JobRequest:
        """A copy carrying fields for the job record that submit worked out (see new_job)."""
        copy = self.model_copy()
        copy._recorded = {**self._recorded, **fields}
        return copy
    models: list[ModelInput] = Field(default_factory=list, description="model files to fetch into the shared "
                                                                       "cache before the workflow runs")

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _check_workflow(v, _limits(info))
        return v

    @field_validator("media")
    @classmethod
    def _media(cls, v: list[MediaInput], info: ValidationInfo) -> list[MediaInput]:
        limits = _limits(info)
        if len(v) > limits.max_media_items:
            raise ValueError(f"has {len(v)} items; the limit is {limits.max_media_items}")
        if len({m.name for m in v}) != len(v):
            raise ValueError("names must be unique")
        total = sum(m.decoded_size() for m in v if m.base64)
        if total > limits.max_media_total_bytes:
            raise ValueError(f"base64 items add up to {total} bytes; the limit is {limits.max_media_total_bytes}")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[ModelInput], info: ValidationInfo) -> list[ModelInput]:
        limit = _limits(info).max_models
        if len(v) > limit:
            raise ValueError(f"has {len(v)} items; the limit is {limit}")
        if len({(m.folder, m.name) for m in v}) != len(v):
            raise ValueError("each folder/name may appear once")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[Override], info: ValidationInfo) -> list[Override]:
        if len(v) > _limits(info).max_overrides:
            raise ValueError(f"has {len(v)} items; the limit is {_limits(info).max_overrides}")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_url(v, _limits(info))

    @field_validator("user_id")
    @classmethod
    def _ident(cls, v: str | None) -> str | None:
        if v is not None and not inputs.matches(inputs.IDENTIFIER, v):
            raise ValueError("must be 1-128 characters of letters, digits and _ . : @ -")
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | None) -> str | None:
        if v is not None and not inputs.matches(inputs.POOL, v):
            raise ValueError("must be 1-64 characters of letters, digits and _ -")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        limits = _limits(info)
        if len(v) > limits.max_metadata_keys:
            raise ValueError(f"has {len(v)} keys; the limit is {limits.max_metadata_keys}")
        if len(json.dumps(v)) > limits.max_metadata_bytes:
            raise ValueError(f"is larger than {limits.max_metadata_bytes} bytes as JSON")
        return v

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v > _limits(info).max_timeout_s:
            raise ValueError(f"must be at most {_limits(info).max_timeout_s} seconds")
        return v

    @model_validator(mode="after")
    def _overrides_name_nodes(self) -> JobRequest:
        if is_ui_format(self.workflow):
            return self  # node ids are those of the converted workflow: checked after conversion
        for i, o in enumerate(self.overrides):
            if o.node not in self.workflow:
                raise ValueError(f"overrides[{i}].node: no node {o.node!r} in the workflow")
        return self

    @model_validator(mode="after")
    def _files_stay_the_jobs_own(self) -> JobRequest:
        # Checked as it will run: an override may set a file input or a save prefix too. A UI-format graph is
        # checked once converted (jobs/prepare.py).
        if not is_ui_format(self.workflow):
            files.check(apply_overrides(self.workflow, [o.model_dump() for o in self.overrides]))
        return self


def json_object(body: bytes | bytearray | str | dict[str, Any], limits: Limits) -> dict[str, Any]:
    """A request body as a JSON object, under the nesting and number rules every entry point shares."""
    if isinstance(body, bytes | bytearray | str):
        body = inputs.loads(body, limits.max_json_depth)
    else:
        inputs.check_plain(body, limits.max_json_depth)
    if not isinstance(body, dict):
        raise MalformedBody("request body must be a JSON object", field="body")
    return body


def parse_submission(body: bytes | bytearray | str | dict[str, Any], limits: Limits | None = None) -> JobRequest:
    """Validate a raw submission; raise InvalidInput naming the first bad field."""
    limits = limits or Limits()
    body = json_object(body, limits)
    try:
        return JobRequest.model_validate(body, context={"limits": limits})
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """The first pydantic error as InvalidInput with a dotted field path like `media[0].url`."""
    err = exc.errors()[0]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "is not a known field"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return InvalidInput(f"{field or 'body'}: {message}{suffix}", field=field or "body")



def new_job(request: JobRequest, job_id: str, default_pool: str, now: datetime) -> Job:
    """A fresh queued job for a validated request."""
    return Job(
        id=job_id, user_id=request.user_id, pool=request.pool or default_pool, created_at=now,
        updated_at=now, webhook_url=request.webhook_url, metadata=request.metadata,
        idempotency_key=request.idempotency_key, timeout_s=request.timeout_s,
        include_previews=request.include_previews, webhook_progress=request.webhook_progress,
        output=request.output, **request._recorded,
    )
