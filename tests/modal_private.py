"""What modal 1.6 shows of an app only through private state, read offline for test_app_offline.py.

Everything public is read through `Function.info()` there; this module is the one place that reaches into
modal's internals: autoscaler bounds and experimental options (closure variables of `_Function._load`),
`required_keys` of a Secret (its `_load` closure), and an image's layers and mounted files. These names are
implementation details, so the module is pinned to the modal series it was written against (pyproject says
modal>=1.6,<1.7) and fails loudly when anything it reads has moved.
"""

from __future__ import annotations

from typing import Any

import modal
from modal._utils.async_utils import synchronizer

TESTED_SERIES = "1.6."
assert modal.__version__.startswith(TESTED_SERIES), (
    f"tests/modal_private.py reads modal {TESTED_SERIES}x internals; modal is {modal.__version__}: re-check it")


def _private(obj: Any) -> Any:
    return synchronizer._translate_in(obj)


def _closure(load: Any) -> dict[str, Any]:
    return dict(zip(load.__code__.co_freevars, (c.cell_contents for c in load.__closure__), strict=True))


def function_options(obj: modal.Function | modal.Cls) -> dict[str, Any]:
    """min/max containers, scaledown window, memory snapshots and experimental options of a Function or Cls."""
    target = _private(obj)
    if isinstance(obj, modal.Cls):
        target = target._get_class_service_function()
    values = _closure(target._load)
    auto = values["autoscaler_settings"]
    field = lambda name: getattr(auto, name) if auto.HasField(name) else None  # noqa: E731
    return {"min_containers": field("min_containers"), "max_containers": field("max_containers"),
            "scaledown_window": field("scaledown_window"), "memory_snapshot": values["enable_memory_snapshot"],
            "experimental": dict(values["experimental_options"] or {})}


def required_keys(secret: modal.Secret) -> list[str]:
    """The keys a Secret.from_name(..., required_keys=...) asserts at deploy."""
    return list(_closure(_private(secret)._load)["required_keys"])


def layers(image: modal.Image) -> list[Any]:
    """The image's layers, newest first (each a private _Image)."""
    out, layer = [], _private(image)
    while layer is not None:
        out.append(layer)
        bases = [d for d in (layer._deps() if layer._deps else []) if type(d).__name__ == "_Image"]
        layer = bases[0] if bases else None
    return out


def _is_mount_layer(layer: Any) -> bool:
    return layer._rep == "Image(local files)"


def mounted_files(image: modal.Image) -> set[str]:
    """Remote paths of every file the image's mount layers (add_local_*, copy=False) attach at start."""
    files: set[str] = set()
    for layer in layers(image):
        for dep in layer._deps() if layer._deps else []:
            if type(dep).__name__ == "_Mount":
                files |= {str(remote) for entry in dep._entries for _, remote in entry.get_files_to_upload()}
    return files


def build_steps(image: modal.Image) -> list[dict[str, Any]]:
    """The build layers, oldest first: the Python modules already added below each, and the function a
    run_function layer runs. A build layer above a mount layer would fail at deploy (modal checks it late)."""
    steps, seen_mount = [], False
    for layer in reversed(layers(image)):
        if _is_mount_layer(layer):
            seen_mount = True
            continue
        functions = [d for d in (layer._deps() if layer._deps else []) if type(d).__name__ == "_Function"]
        steps.append({"sources": sorted(layer._added_python_source_set), "after_mount": seen_mount,
                      "runs": [f._raw_f.__module__ + "." + f._raw_f.__name__ for f in functions]})
    return steps


def web_app(fn: modal.Function, method: str) -> Any:
    """The FastAPI app a fastapi_endpoint container serves for `fn`: modal's own wrapper around the function
    the container imports (what its /docs and /openapi.json show)."""
    from modal._runtime.asgi import magic_fastapi_app

    return magic_fastapi_app(_private(fn)._raw_f_, method, True)


def dockerfiles(image: modal.Image, version: str) -> list[list[str]]:
    """Each build layer's Dockerfile commands, oldest first, as modal renders them for builder `version`
    (what the server receives as ImageGetOrCreateRequest.image.dockerfile_commands; one list per layer).
    Mount layers render nothing; a run_function layer renders an empty list."""
    out = []
    for layer in reversed(layers(image)):
        if _is_mount_layer(layer):
            continue
        render = _closure(layer._load)["dockerfile_function"]
        out.append(list(render(version).commands) if render else [])
    return out


def app_members(app: modal.App) -> list[str]:
    """The names of the functions and classes `modal deploy` of this App deploys (App.registered_functions is
    deprecated in 1.6 and has no public successor)."""
    state = _private(app)._local_state
    return sorted({name.removesuffix(".*") for name in [*state.functions, *state.classes]})


def is_asgi(fn: modal.Function) -> bool:
    """Whether the function serves an ASGI app (@modal.asgi_app): FunctionInfo shows no web method for it."""
    from modal_proto import api_pb2

    config = _private(fn)._webhook_config
    return config is not None and config.type == api_pb2.WEBHOOK_TYPE_ASGI_APP
