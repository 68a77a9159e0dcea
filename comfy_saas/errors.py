"""The project's exceptions, one tree under one base.

    ComfySaasError
    ├── InvalidInput            bad submission or parameter; names the field        (HTTP 422)
    │   ├── MalformedBody       the body is not JSON at all                         (HTTP 400)
    │   ├── PreflightFailed     the workflow cannot run on this deployment; lists every problem
    │   ├── UnconvertibleWorkflow  a UI-format graph that cannot become an API workflow; lists the nodes
    │   ├── WorkflowFormatUi    a UI-format graph where only the API format is taken (Comfy API v2)
    │   ├── MissingAsset        an asset reference that does not resolve to one of the caller's assets
    │   ├── IdempotencyKeyReuse an idempotency key sent again with another request
    │   ├── RangeNotSatisfiable a byte range outside the content                     (HTTP 416)
    │   └── BodyTooLarge        the body is over the size limit                     (HTTP 413)
    ├── NotFound                no such job, or not visible to this caller          (HTTP 404)
    │   └── BlobNotFound        no blob with that hash the caller may use
    ├── Unauthorized            missing or wrong API key                            (HTTP 401)
    ├── Forbidden               a valid key that may not do this                    (HTTP 403)
    ├── Conflict                the job's state forbids the request                 (HTTP 409)
    │   ├── AlreadyFinished     the job is already completed, failed or cancelled; names its status
    │   ├── IllegalTransition   a status move the lifecycle does not allow
    │   ├── NotOwner            a write by a worker whose attempt was taken over
    │   ├── HashMismatch        uploaded bytes do not have the hash the client declared
    │   ├── AssetInUse          an asset record something still depends on
    │   └── IdempotencyInFlight the first request with this idempotency key is still being answered
    ├── Overloaded              try again later; carries retry_after_s              (HTTP 429)
    │   ├── QueueFull           the work queue partition is at capacity
    │   └── TooManyStreams      the caller holds as many event streams open as it may
    ├── BackendError            Dict, Queue or object storage failed                (HTTP 503)
    │   └── CatalogueUnavailable  no worker has published the node catalogue yet; carries retry_after_s
    ├── MediaError              a media input could not be fetched or was refused   (job fails)
    ├── ModelError              a model file could not be downloaded or verified    (job fails)
    └── ComfyUIError            ComfyUI said no, or is not there
        ├── ComfyUnavailable    the process died or stopped answering               (attempt requeued)
        ├── OutputUnavailable   /view refused or lacks an output the prompt reported (job fails)
        └── PromptRejected      /prompt answered 400; carries node_errors           (job fails)

The HTTP layer maps these in one place; nothing below it knows about status codes.
"""

from __future__ import annotations


class ComfySaasError(Exception):
    """Base of every error this project raises on purpose."""

    type: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        """The one error body shape: {"type", "message", "field"?}."""
        return {"type": self.type, "message": self.message}


class InvalidInput(ComfySaasError):
    type = "invalid_input"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body = super().to_dict()
        if self.field:
            body["field"] = self.field
        return body


class PreflightFailed(InvalidInput):
    type = "preflight_failed"

    def __init__(self, message: str, problems: list[dict]) -> None:
        super().__init__(message, field="workflow")
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "details": self.problems}


class UnconvertibleWorkflow(InvalidInput):
    type = "unconvertible_workflow"

    def __init__(self, message: str, problems: list[dict]) -> None:
        super().__init__(message, field="workflow")
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "details": self.problems}


class WorkflowFormatUi(InvalidInput):
    type = "workflow_format_ui"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="workflow")


class MissingAsset(InvalidInput):
    type = "missing_asset"

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message, field="workflow")
        self.details = details or {}

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "details": self.details}


class IdempotencyKeyReuse(InvalidInput):
    type = "idempotency_key_reuse"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="Idempotency-Key")


class RangeNotSatisfiable(InvalidInput):
    type = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, field="Range")
        self.size = size


class MalformedBody(InvalidInput):
    type = "malformed_body"


class BodyTooLarge(InvalidInput):
    type = "body_too_large"


class NotFound(ComfySaasError):
    type = "not_found"


class BlobNotFound(NotFound):
    type = "blob_not_found"


class Unauthorized(ComfySaasError):
    type = "unauthorized"


class Forbidden(ComfySaasError):
    type = "forbidden"


class Conflict(ComfySaasError):
    type = "conflict"


class AlreadyFinished(Conflict):
    type = "already_finished"

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "details": {"status": self.status}}


class IllegalTransition(Conflict):
    type = "illegal_transition"


class NotOwner(Conflict):
    type = "not_owner"


class HashMismatch(Conflict):
    type = "hash_mismatch"


class AssetInUse(Conflict):
    type = "asset_in_use"


class IdempotencyInFlight(Conflict):
    type = "idempotency_key_in_use"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(ComfySaasError):
    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Overloaded):
    type = "queue_full"


class TooManyStreams(Overloaded):
    type = "too_many_streams"


class BackendError(ComfySaasError):
    type = "backend_error"


class CatalogueUnavailable(BackendError):
    type = "catalogue_unavailable"

    def __init__(self, message: str, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MediaError(ComfySaasError):
    type = "media_error"


class ModelError(ComfySaasError):
    """A model file a job names by URL could not be fetched, was too large or failed its sha256 check."""

    type = "model_error"

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class ComfyUIError(ComfySaasError):
    type = "comfyui_error"


class ComfyUnavailable(ComfyUIError):
    type = "comfyui_unavailable"


class OutputUnavailable(ComfyUIError):
    type = "output_unavailable"


class PromptRejected(ComfyUIError):
    type = "prompt_rejected"

    def __init__(self, message: str, body: dict) -> None:
        super().__init__(message)
        self.body = body
