"""ComfyUI's input, output and temp folders as seen from the worker, and deleting one job's files from them.

ComfyUI never deletes what it reads or writes, and every prompt on a warm worker shares its folders. The
worker puts each attempt's files under a subfolder named by its tag (media in `input/<tag>/`, saves in
`output/<tag>/`, see workflows/files.py) and removes them once the outputs are uploaded. The folders are
known where the worker launched ComfyUI itself (from the flags it passed, as ComfyUI reads them) or when
configured for a ComfyUI on this machine; otherwise there is nothing to delete from here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FLAGS = ("--base-directory", "--input-directory", "--output-directory", "--temp-directory")


def _flag_values(args: list[str]) -> dict[str, str]:
    """The folder flags in a ComfyUI command line, in `--flag value` or `--flag=value` form (last one wins)."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in _FLAGS:
            if eq:
                found[name] = value
            elif i + 1 < len(args):
                found[name] = args[i + 1]
    return found


@dataclass(frozen=True)
class ComfyFolders:
    """Where one ComfyUI keeps the files prompts read (input), write (output) and preview (temp)."""

    input: Path
    output: Path
    temp: Path

    def __post_init__(self) -> None:
        for name in ("input", "output", "temp"):  # resolved once: every deletion is checked against them
            object.__setattr__(self, name, Path(getattr(self, name)).resolve())

    @classmethod
    def from_command(cls, comfy_dir: str | Path, args: list[str]) -> ComfyFolders:
        """The folders a ComfyUI started from comfy_dir with these flags uses: --base-directory (default: its
        own directory), --input-directory, --output-directory, and --temp-directory X meaning X/temp."""
        cwd = Path(comfy_dir).resolve()
        flags = _flag_values(args)
        at = lambda raw: (cwd / raw).resolve()  # noqa: E731 - ComfyUI makes relative flags absolute from its cwd
        base = at(flags.get("--base-directory", "."))
        temp_root = at(flags["--temp-directory"]) if "--temp-directory" in flags else base
        return cls(input=at(flags["--input-directory"]) if "--input-directory" in flags else base / "input",
                   output=at(flags["--output-directory"]) if "--output-directory" in flags else base / "output",
                   temp=temp_root / "temp")

    @classmethod
    def under(cls, base: str | Path) -> ComfyFolders:
        """The default layout of a ComfyUI whose base directory is `base`."""
        root = Path(base).resolve()
        return cls(input=root / "input", output=root / "output", temp=root / "temp")

    def by_type(self, kind: str) -> Path | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind)

    def remove_job_files(self, tag: str, refs: Iterable[dict[str, Any]] = ()) -> int:
        """Delete the job's subfolders and every file its history named; how many entries went. Nothing
        outside the three folders is ever touched, whatever a ref says."""
        removed = 0
        for folder in (self.input, self.output, self.temp):
            removed += _remove(folder, folder / tag)
        for ref in refs:
            base = self.by_type(str(ref.get("type", "output")))
            if base is not None and isinstance(ref.get("filename"), str):
                removed += _remove(base, base / str(ref.get("subfolder") or "") / ref["filename"])
        return removed


def _remove(base: Path, target: Path) -> int:
    """Delete target (a file, or a folder with everything in it) if it lies strictly inside base (resolved)."""
    if not os.path.lexists(target):
        return 0  # most jobs have no input or temp folder: no need to resolve a path that is not there
    try:
        resolved = target.resolve()
        if resolved == base or not resolved.is_relative_to(base):
            return 0
        if resolved.is_dir():
            shutil.rmtree(resolved)
            return 1
        resolved.unlink()
        return 1
    except FileNotFoundError:
        return 0
