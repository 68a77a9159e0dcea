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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="comfy-saas", description="Serverless ComfyUI job API")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"serve": serve}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
