"""The `comfy-saas` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from settings import Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API, workers and sweeper locally")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, help="where jobs and outputs live (default ./data or COMFY_DATA_DIR)")
    p.add_argument("--workers", type=int, default=1, help="workers, each with its own ComfyUI")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--comfyui-url", default=os.environ.get("COMFYUI_URL"),
                        help="use a running ComfyUI (env COMFYUI_URL)")
    source.add_argument("--comfyui-dir", type=Path, default=os.environ.get("COMFYUI_DIR"),
                        help="launch ComfyUI from this directory (env COMFYUI_DIR)")


def serve(args: argparse.Namespace) -> int:
    from local_stack import StackOptions
    from local_stack import serve as run

    settings = Settings.from_env()
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    options = StackOptions(host=args.host, port=args.port, workers=args.workers,
                           comfyui_url=args.comfyui_url, comfyui_dir=args.comfyui_dir)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the local stack is stopped
        run(settings, options)
    return 0


def _worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one worker process against the local data directory")
    p.add_argument("--data-dir", type=Path, help="the data directory `serve` uses (default COMFY_DATA_DIR)")
    p.add_argument("--pool", default=None, help="the pool to take jobs from")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--comfyui-url", default=os.environ.get("COMFYUI_URL"))
    source.add_argument("--comfyui-dir", type=Path, default=os.environ.get("COMFYUI_DIR"))


def worker(args: argparse.Namespace) -> int:
    """One worker; exits 3 when its ComfyUI is unhealthy and cannot be restarted (a supervisor restarts it)."""
    import signal
    import threading

    from comfy_client import ComfyClient
    from comfy_process import DOUBLE_DIR, ComfyProcess
    from local_stack import free_port, local_services
    from worker import Worker

    settings = Settings.from_env()
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    svc = local_services(settings)
    proc = None
    if args.comfyui_url:
        client = ComfyClient(args.comfyui_url)
    else:
        proc = ComfyProcess(args.comfyui_dir or DOUBLE_DIR, free_port())
        proc.start()
        client = proc.client
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    unhealthy = threading.Event()

    def recover() -> bool:
        if proc is None:
            unhealthy.set()
            return False
        proc.restart()
        return True

    try:
        Worker(svc.store, svc.objects, client, settings, pool=args.pool, on_unhealthy=recover).run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            proc.stop()
    return 3 if unhealthy.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="comfy-saas", description="Serverless ComfyUI job API")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _worker_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"serve": serve, "worker": worker}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
