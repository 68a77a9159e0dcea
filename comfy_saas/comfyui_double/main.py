"""ComfyUI protocol double: started exactly like ComfyUI (`python main.py --listen 127.0.0.1 --port N`).

It answers ComfyUI's HTTP + WebSocket API as recorded from ComfyUI 0.3.64, executing a handful of nodes
with Pillow; its model loaders list and read the folders `--extra-model-paths-config` names. Flags it does
not know (ComfyUI has many) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from comfy_saas.comfyui_double.model_paths import add, parse_config
from comfy_saas.comfyui_double.server import Config, DoubleServer

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--output-directory", type=Path, default=HERE / "output")
    parser.add_argument("--input-directory", type=Path, default=HERE / "input")
    parser.add_argument("--temp-directory", type=Path, default=None)
    parser.add_argument("--extra-model-paths-config", type=Path, nargs="+", action="append", default=[],
                        help="extra_model_paths.yaml files naming model folders, as in ComfyUI")
    parser.add_argument("--double-exec-delay", type=float, default=0.0,
                        help="seconds every prompt takes before its nodes run (benchmarks)")
    args, _ignored = parser.parse_known_args(argv)
    temp = args.temp_directory / "temp" if args.temp_directory else HERE / "temp"
    dirs = {"output": args.output_directory, "input": args.input_directory, "temp": temp}
    model_paths: dict[str, list[Path]] = {}
    for config in (p for group in args.extra_model_paths_config for p in group):
        for folder, path, is_default in parse_config(config):
            add(model_paths, folder, path, is_default)
    server = DoubleServer(Config(dirs=dirs, exec_delay_s=args.double_exec_delay, argv=["main.py", *argv],
                                 model_paths=model_paths))
    logging.basicConfig(level=logging.WARNING)
    print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
    # Open WebSockets must not hold a shutdown up: ComfyUI itself exits promptly on SIGTERM.
    web.run_app(server.app(), host=args.listen, port=args.port, print=None, access_log=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
