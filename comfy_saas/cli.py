"""The `comfy-saas` command: run the local stack or a worker, use the API, and operate the store."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from comfy_saas.config import Settings

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR = 0, 1, 2


# --- serve and worker ------------------------------------------------------------------------------


def _comfy_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--comfyui-url", help="use a running ComfyUI (COMFY_COMFYUI_URL)")
    source.add_argument("--comfyui-dir", help="launch ComfyUI from this directory (COMFY_COMFYUI_DIR)")
    p.add_argument("--comfyui-python", help="the Python that runs a launched ComfyUI, e.g. its own venv "
                                            "(COMFY_COMFYUI_PYTHON)")
    p.add_argument("--comfyui-args", help="extra flags for a launched ComfyUI, e.g. --comfyui-args=--cpu "
                                          "(COMFY_COMFYUI_ARGS)")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with this command's flags on top."""
    settings = Settings.from_env(data_dir=getattr(args, "data_dir", None))
    flags = {name: getattr(args, f"comfyui_{name}", None) for name in ("url", "dir", "python", "args")}
    flags = {k: str(v) for k, v in flags.items() if v is not None}
    return replace(settings, comfyui=replace(settings.comfyui, **flags)) if flags else settings


def serve(args: argparse.Namespace) -> int:
    from comfy_saas.local import StackOptions
    from comfy_saas.local import serve as run

    options = StackOptions(host=args.host, port=args.port, workers=args.workers)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the local stack is stopped
        run(_settings(args), options)
    return EXIT_OK


def worker(args: argparse.Namespace) -> int:
    """One worker process; exits 3 when its ComfyUI URL stops answering (a supervisor restarts it)."""
    import signal
    import threading

    from comfy_saas.jobs.services import local_services
    from comfy_saas.local import comfy_at_url, job_models, launch_comfyui
    from comfy_saas.runner.worker import Worker

    settings = _settings(args)
    svc = local_services(settings)
    proc, root = None, settings.data_dir / "comfy" / f"worker-{os.getpid()}"
    if settings.comfyui.url:
        client = comfy_at_url(settings)
    else:
        proc = launch_comfyui(settings, root)
        client = proc.client
    stop, unhealthy = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def recover() -> bool:
        if proc is None:
            unhealthy.set()
            return False
        proc.restart()
        return True

    try:
        with contextlib.suppress(KeyboardInterrupt):
            Worker(svc, client, pool=args.pool, on_unhealthy=recover, **job_models(settings, root)).run(stop)
    finally:
        if proc is not None:
            proc.stop()
    return 3 if unhealthy.is_set() else EXIT_OK


# --- API commands ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace):
    from comfy_saas.client import Client, Routes

    defaults = Settings.from_env().client
    key = args.api_key or defaults.api_key or None
    modal_app = args.modal_app or defaults.modal_app
    if modal_app:
        return Client(routes=Routes.deployed(modal_app), api_key=key)
    return Client(args.url or defaults.url, api_key=key)


def _split_pairs(pairs: list[str], flag: str, shape: str) -> list[tuple[str, str]]:
    """KEY=VALUE flags as (key, value) pairs; a flag without '=' is a ValueError naming the expected shape."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{flag} {pair!r} must look like {shape}")
        out.append((key, value))
    return out


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, raw in _split_pairs(pairs, "--set", "NODE.INPUT=VALUE"):
        try:
            out[path] = json.loads(raw)  # numbers, booleans, quoted strings, lists
        except ValueError:
            out[path] = raw
    return out


def _parse_media(pairs: list[str]) -> dict[str, str]:
    return dict(_split_pairs(pairs, "--media", "NAME=PATH or NAME=URL"))


def progress_line(job: dict[str, Any], width: int = 24) -> str:
    """One line: bar, percent, node, step and ETA."""
    p = job.get("progress") or {}
    percent = float(p.get("percent") or (100.0 if job["status"] == "completed" else 0.0))
    filled = int(width * percent / 100)
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%", job["status"]]
    if p.get("phase") in {"download", "download_wait"}:
        total = f"/{p['bytes_total'] / 1e6:.1f}" if p.get("bytes_total") else ""
        verb = "downloading" if p["phase"] == "download" else "waiting for another job's download of"
        parts.append(f"{verb} {p.get('file')} {(p.get('bytes_done') or 0) / 1e6:.1f}{total} MB")
    if p.get("node_id"):
        parts.append(f"node {p['node_id']} ({p.get('node_class') or '?'})")
    if p.get("step") and p.get("steps"):
        parts.append(f"step {p['step']}/{p['steps']}")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {p['eta_s']:.0f}s")
    return "  ".join(parts)


def submit(args: argparse.Namespace) -> int:
    c = _client(args)
    job = c.submit(args.workflow, media=_parse_media(args.media), overrides=_parse_sets(args.set),
                   webhook_url=args.webhook, idempotency_key=args.idempotency_key)
    print(job["id"])
    if not args.wait:
        return EXIT_OK
    done = _follow(c, job)
    print(file=sys.stderr)
    return _finished(c, done, args.out)


def _follow(c: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Show the progress line until the job ends: over Server-Sent Events, or by polling without them."""
    from comfy_saas.client import ApiError

    tty = sys.stderr.isatty()

    def show(j: dict[str, Any]) -> None:
        print(("\r" if tty else "") + progress_line(j), end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        for _, kind, data in c.stream(job["id"]):
            if kind == "progress":
                show({"status": "running", "progress": data["progress"]})
            else:
                show(data)
                return data
    except ApiError as exc:
        if exc.status != 404:
            raise
    return c.wait(job["id"], on_progress=show)


def _finished(c: Any, job: dict[str, Any], out: Path | None) -> int:
    if job["status"] != "completed":
        err = job.get("error") or {}
        where = f" at node {err['node_id']} ({err.get('node_class')})" if err.get("node_id") else ""
        print(f"job {job['id']} {job['status']}{where}: {err.get('message', '')}", file=sys.stderr)
        return EXIT_JOB_FAILED
    if out is not None:
        for path in c.download(job, out):
            print(path)
    return EXIT_OK


# --- run a workflow template ---------------------------------------------------------------------------


def _truth(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"{raw!r} is not true or false")


def _seed(raw: str) -> int | str:
    if raw.lower() == "random":
        return "random"
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer or 'random'") from None


def _flag_spec(prop: dict[str, Any]) -> tuple[Any, list[str] | None, str]:
    """(argparse type, choices, help) for one property of a template's input schema."""
    value = prop["anyOf"][0] if "anyOf" in prop else prop
    kind = {"integer": int, "number": float, "boolean": _truth}.get(value.get("type"), str)
    bounds = [f"{k} {value[k]}" for k in ("minimum", "maximum") if k in value]
    notes = [prop.get("description") or "", ", ".join(bounds), f"default {prop['default']!r}" if "default" in prop
             else "required", '-1 or "random" draws a seed' if prop.get("x-seed") else "",
             "a file, URL or media name" if value.get("x-media") else ""]
    return (_seed if prop.get("x-seed") else kind), value.get("enum"), "; ".join(n for n in notes if n)


def input_parser(name: str, schema: dict[str, Any]) -> argparse.ArgumentParser:
    """The flags of a template's inputs, built from its JSON Schema."""
    parser = argparse.ArgumentParser(prog=f"comfy-saas run {name}", add_help=False,
                                     description=f"inputs of the workflow template {name!r}")
    for key, prop in (schema.get("properties") or {}).items():
        kind, choices, help_text = _flag_spec(prop)
        flags = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        parser.add_argument(*flags, dest=key, type=kind, choices=choices, default=None, help=help_text)
    return parser


def _input_values(schema: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    from comfy_saas.client import data_url

    values = {k: v for k, v in parsed.items() if v is not None}
    for key, value in values.items():
        media = (schema["properties"][key].get("x-media") or "") if isinstance(value, str) else ""
        if media and Path(value).is_file():
            values[key] = data_url(value)  # a local file travels as a data: URL
    return values


def run(args: argparse.Namespace) -> int:
    """Submit a job from a template with --<input> flags built from its schema."""
    c = _client(args)
    template = c.get_template(args.name)
    parser = input_parser(args.name, template["schema"])
    if args.help:
        parser.print_help()
        return EXIT_OK
    values = _input_values(template["schema"], vars(parser.parse_args(args.rest)))
    output = {"format": args.output_format, **({"quality": args.quality} if args.quality else {})} \
        if args.output_format else None
    options = {k: v for k, v in {"output": output, "webhook_url": args.webhook}.items() if v is not None}
    job = c.start(args.name, values, **options)
    print(job["id"])
    if not args.wait:
        return EXIT_OK
    done = _follow(c, job)
    print(file=sys.stderr)
    return _finished(c, done, args.out)


def status(args: argparse.Namespace) -> int:
    job = _client(args).get(args.job_id)
    print(json.dumps(job, indent=2) if args.json else progress_line(job))
    return EXIT_OK


def list_(args: argparse.Namespace) -> int:
    for i, job in enumerate(_client(args).list(status=args.status, user_id=args.user_id)):
        if i >= args.limit:
            break
        print(f"{job['id']}  {job['status']:<9}  {job['created_at']}  {job.get('user_id') or '-'}")
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    print(_client(args).cancel(args.job_id)["status"])
    return EXIT_OK


# --- ops -------------------------------------------------------------------------------------------------


def ops(args: argparse.Namespace) -> int:
    from comfy_saas.jobs import ops as operations

    if args.modal:
        from comfy_saas.modal_runtime import deployed_services

        svc = deployed_services()
    else:
        from comfy_saas.jobs.services import local_services

        svc = local_services(_settings(args))
    if args.ops_command == "queue":
        result: Any = operations.queue_depths(svc, args.pool or list(svc.settings.pool_table()))
    elif args.ops_command == "inspect":
        result = operations.inspect(svc, args.job_id)
    elif args.ops_command == "requeue":
        result = operations.requeue(svc, args.job_id)
    elif args.ops_command == "fail":
        result = operations.fail(svc, args.job_id, args.reason)
    elif args.ops_command == "models":
        result = operations.models(svc)
    elif args.ops_command == "models-delete":
        result = operations.delete_model(svc, args.sha256)
    else:
        result = dict(operations.purge(svc))
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


# --- config ----------------------------------------------------------------------------------------


def config(args: argparse.Namespace) -> int:
    """Every setting with its variable, default and meaning (the README's table), or the values in effect."""
    from comfy_saas.config.settings import describe, environment

    if args.markdown:
        print(config_table())
        return EXIT_OK
    env = environment()
    for name, default, help_text in describe():
        value = env.get(name)
        shown = "(set)" if value is not None and _secret(name) else value
        print(f"{name}={shown if value is not None else default!s}{'' if value is not None else '  (default)'}"
              f"  # {help_text}")
    return EXIT_OK


def _secret(name: str) -> bool:
    return any(word in name for word in ("KEY", "SECRET", "TOKEN"))


def config_table() -> str:
    """The configuration table as Markdown, generated from the settings themselves."""
    from comfy_saas.config.settings import describe

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, help_text in describe():
        shown = f"`{default}`" if default not in ("", None) else ""
        rows.append(f"| `{name}` | {shown} | {help_text} |")
    return "\n".join(rows)


# --- parser --------------------------------------------------------------------------------------------


def _api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the API's base URL (COMFY_CLIENT_URL, default http://127.0.0.1:8000)")
    p.add_argument("--modal-app", help="use the endpoints of this deployed Modal app instead, e.g. comfy-saas "
                                       "(COMFY_CLIENT_MODAL_APP; needs Modal credentials)")
    p.add_argument("--api-key", help="the API key to send (COMFY_CLIENT_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-saas", description="Serverless ComfyUI job API")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API, workers and sweeper locally")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, help="where jobs and outputs live (COMFY_DATA_DIR, default ./data)")
    p.add_argument("--workers", type=int, default=1, help="workers, each with its own ComfyUI")
    _comfy_source(p)
    p.set_defaults(run=serve)

    p = sub.add_parser("worker", help="run one worker process against the local data directory")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--pool", default=None)
    _comfy_source(p)
    p.set_defaults(run=worker)
    _add_api_commands(sub)
    _add_ops(sub)
    p = sub.add_parser("config", help="every setting: its variable, value in effect and meaning")
    p.add_argument("--markdown", action="store_true", help="the README's table of variables and defaults")
    p.set_defaults(run=config)
    return parser


def _add_api_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a workflow (JSON file, API or UI format)")
    p.add_argument("workflow", type=Path)
    p.add_argument("--media", action="append", default=[], metavar="NAME=PATH|URL")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    p.add_argument("--webhook")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="show progress until the job finishes")
    p.add_argument("--out", type=Path, help="with --wait: download outputs here")
    _api_options(p)
    p.set_defaults(run=submit)

    p = sub.add_parser("run", add_help=False, help="submit a job from a workflow template: run NAME --INPUT VALUE ...")
    p.add_argument("name")
    p.add_argument("-h", "--help", action="store_true", help="the template's input flags")
    p.add_argument("--wait", action="store_true", help="show progress until the job finishes")
    p.add_argument("--out", type=Path, help="with --wait: download outputs here")
    p.add_argument("--output-format", choices=["original", "png", "webp", "jpeg"], help="convert still images")
    p.add_argument("--quality", type=int, help="webp/jpeg quality 1-100")
    p.add_argument("--webhook")
    _api_options(p)
    p.set_defaults(run=run)

    p = sub.add_parser("status", help="a job's status and progress")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    _api_options(p)
    p.set_defaults(run=status)

    p = sub.add_parser("list", help="jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--user-id")
    p.add_argument("--limit", type=int, default=20)
    _api_options(p)
    p.set_defaults(run=list_)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    _api_options(p)
    p.set_defaults(run=cancel)


def _add_ops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="operate the store directly (local data dir, or --modal in `modal shell`)")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--modal", action="store_true", help="the deployed Dict/Queue instead of the local ones")
    ops_sub = p.add_subparsers(dest="ops_command", required=True)
    q = ops_sub.add_parser("queue", help="queue depth per pool (every pool in COMFY_POOLS unless --pool)")
    q.add_argument("--pool", action="append")
    for name in ("inspect", "requeue"):
        ops_sub.add_parser(name).add_argument("job_id")
    f = ops_sub.add_parser("fail")
    f.add_argument("job_id")
    f.add_argument("--reason", default="failed by an operator")
    ops_sub.add_parser("purge", help="delete finished jobs past retention now")
    ops_sub.add_parser("models", help="the model cache: folder, name, sha256, size, source URL, last use")
    ops_sub.add_parser("models-delete", help="remove one cached model file (refused while a job uses it)"
                       ).add_argument("sha256")
    p.set_defaults(run=ops)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest  # `run`: the template's --INPUT flags, parsed once its schema is known
    from comfy_saas import logs

    logs.configure(logging.INFO if args.command in {"serve", "worker"} else logging.WARNING)
    from comfy_saas.client import ApiError, ApiUnreachable
    from comfy_saas.errors import ComfySaasError

    try:
        return args.run(args)
    except ApiUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ApiError as exc:
        field = f" (field {exc.field})" if exc.field else ""
        print(f"error: {exc.status} {exc.type}: {exc.message}{field}", file=sys.stderr)
    except ComfySaasError as exc:
        print(f"error: {exc.type}: {exc.message}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
