"""comfy-saas: a serverless job API for ComfyUI on Modal (and its local twin).

    config/     settings from the environment, deploy.toml, Modal object names
    backends/   Dict/Queue twins, object storage (R2 or a folder), SSRF-safe fetching
    workflows/  edits and pre-flight checks of API-format workflows
    jobs/       the job model, store, lifecycle, operations, webhooks, sweeper, cleanup, operator tools
    runner/     the worker that drives one ComfyUI: client, process, progress, outputs
    web/        HTTP handlers, auth, the error map, metrics, calls for other Modal apps
    client.py   the Python SDK (standard library only);  cli.py  the `comfy-saas` command
    local.py    the whole service on one machine;  modal_runtime.py  what Modal containers run
"""

__version__ = "0.1.0"
