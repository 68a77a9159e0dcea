"""ComfyUI runs this before it imports its own modules (custom node prestartup hook).

During a Modal memory snapshot there is no GPU, and CUDA must not be touched: ComfyUI's device pick
(`comfy.model_management.get_torch_device`) would call `torch.cuda.current_device()` at import time.
We install an import hook that, when `comfy.model_management` is loaded, compiles it with that one
line changed to fall back to the CPU while CUDA is unavailable. ComfyUI's files are never modified.
After restore, `POST /cuda/set_device` (see __init__.py) moves ComfyUI onto the GPU.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys

log = logging.getLogger("memory_snapshot_helper")

TARGET_MODULE = "comfy.model_management"
EXPECTED = "return torch.device(torch.cuda.current_device())"
REPLACEMENT = ("return (torch.device(torch.cuda.current_device()) if torch.cuda.is_available() "
               "else torch.device('cpu'))  # patched by memory_snapshot_helper")
_MARKER = "_memory_snapshot_helper_hook"


class ComfyUIChanged(RuntimeError):
    """The ComfyUI code this helper adapts is not what it expects; pin ComfyUI or update the helper."""


def patch_source(source: str) -> str:
    """The module source with the device fallback applied; ComfyUIChanged unless EXPECTED occurs once."""
    count = source.count(EXPECTED)
    if count != 1:
        raise ComfyUIChanged(f"{TARGET_MODULE}: expected exactly one {EXPECTED!r}, found {count}")
    return source.replace(EXPECTED, REPLACEMENT)


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):
        source = patch_source(importlib.util.decode_source(data))
        log.info("memory_snapshot_helper: %s falls back to CPU while CUDA is unavailable", TARGET_MODULE)
        return compile(source, path, "exec", dont_inherit=True, optimize=_optimize)

    def get_code(self, fullname):
        # Bypass the bytecode cache: a cached .pyc would skip source_to_code.
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            raise ComfyUIChanged(f"{TARGET_MODULE} is not a plain source module here")
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def install() -> bool:
    """Install the import hook once per process; False when it was already there."""
    if any(getattr(f, _MARKER, False) for f in sys.meta_path):
        return False
    if TARGET_MODULE in sys.modules:
        raise ComfyUIChanged(f"{TARGET_MODULE} was imported before the prestartup hook ran")
    finder = _Finder()
    setattr(finder, _MARKER, True)
    sys.meta_path.insert(0, finder)
    return True


install()
