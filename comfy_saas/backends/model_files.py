"""Where cached model files live: one flat folder of blobs named by their sha256, plus a temp folder on the
same filesystem so a finished download moves into place atomically.

    LocalModelFiles(root)                    a folder (the local home, tests)
    VolumeModelFiles(volume, root, mounted)  Modal's models Volume: commit after a file lands, reload to see
                                             other containers' files; without a mount (API containers) it
                                             lists and removes through the Volume's API

Nobody else touches the blobs: the cache bookkeeping (who downloads, who uses, what to evict) lives in the
store, not here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOBS, TEMP = "sha256", "tmp"


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    mtime: float


class LocalModelFiles:
    """Blobs in `root/sha256/<sha>`, partial downloads in `root/tmp/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the blob is on this machine (it may not exist)."""
        return self.root / BLOBS / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def temp_path(self) -> Path:
        """A fresh name for a download in progress, on the blobs' filesystem."""
        folder = self.root / TEMP
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.part"

    def put(self, temp: Path, sha256: str) -> Path:
        """Move a verified download into place (atomic: a reader sees all of it or nothing)."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        return target

    def list(self) -> list[Blob]:
        """Every cached blob with its size."""
        folder = self.root / BLOBS
        if not folder.is_dir():
            return []
        out = []
        for entry in os.scandir(folder):
            if entry.is_file():
                st = entry.stat()
                out.append(Blob(entry.name, st.st_size, st.st_mtime))
        return out

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def refresh(self) -> None:
        """See files other machines added (a no-op on a local folder)."""

    def sweep_temp(self, older_than_s: float) -> int:
        """Delete partial downloads left by dead downloaders; how many."""
        folder, removed = self.root / TEMP, 0
        if not folder.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        for entry in os.scandir(folder):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed


class VolumeModelFiles(LocalModelFiles):
    """The same layout on a modal.Volume. `root` is where it is mounted plus the cache's subfolder; `inside` is
    that subfolder's path within the Volume (for the API calls made where it is not mounted)."""

    def __init__(self, volume: Any, root: str | Path, inside: str, mounted: bool) -> None:
        super().__init__(root)
        self.volume, self.inside, self.mounted = volume, inside.strip("/"), mounted

    def put(self, temp: Path, sha256: str) -> Path:
        target = super().put(temp, sha256)
        self.volume.commit()  # other containers see it after their next reload
        return target

    def list(self) -> list[Blob]:
        if self.mounted:
            return super().list()
        try:
            entries = self.volume.listdir(f"{self.inside}/{BLOBS}")
        except FileNotFoundError:
            return []
        return [Blob(Path(e.path).name, e.size, float(e.mtime)) for e in entries if int(e.type) == 1]

    def remove(self, sha256: str) -> None:
        if not self.mounted:
            with contextlib.suppress(FileNotFoundError):
                self.volume.remove_file(f"{self.inside}/{BLOBS}/{sha256}")
            return
        super().remove(sha256)
        self.volume.commit()

    def refresh(self) -> None:
        if not self.mounted:
            return
        try:
            self.volume.reload()
        except RuntimeError as exc:  # Modal refuses while files on the Volume are open; the caller re-checks
            log.warning("models volume reload failed: %s", exc)
