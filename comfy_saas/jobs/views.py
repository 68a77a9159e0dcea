"""A job as the API shows it: the public fields, freshly presigned output URLs, and its webhook delivery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comfy_saas.jobs.model import Job

if TYPE_CHECKING:  # the container sits above; only its shape is used here
    from comfy_saas.jobs.services import Services


def job_view(svc: Services, job: Job) -> dict[str, Any]:
    """The job as the API returns it, with freshly presigned output URLs and its webhook delivery."""
    body = job.public()
    for out in body["outputs"]:
        out["url"] = svc.objects.url(out["key"])
    if job.webhook_url and job.terminal:
        delivery = svc.store.webhook(job.id)
        if delivery is not None:
            body["webhook"] = {k: delivery[k] for k in ("event", "state", "attempts", "next_at")}
    return body
