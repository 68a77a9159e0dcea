"""Receiving a multipart asset upload as it streams in: the file part is hashed (blake3) and spooled to a temporary
file chunk by chunk, never held in memory, and refused the moment it passes the size cap; text parts are small
and counted."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from comfy_saas.errors import BodyTooLarge, InvalidInput
from comfy_saas.v2.assets import Received

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 64
FILE_FIELD = "file"


class UploadReader:
    """Feed it the body's chunks, then `finish()` for the Received upload; `discard()` in any case."""

    def __init__(self, content_type: str | None, max_file_bytes: int) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        media_type, params = parse_options_header(content_type or "")
        if media_type != b"multipart/form-data" or not params.get(b"boundary"):
            raise InvalidInput("body: send multipart/form-data with the parts file, content_type and file_path",
                               field="body")
        self._parse_options = parse_options_header
        self.cap, self.fields = max_file_bytes, {}
        self.size, self.parts, self._file, self._path = 0, 0, None, None
        self._hasher: Any = None
        self._header, self._headers, self._name, self._value = b"", {}, None, bytearray()
        self._ended = False
        names = ("on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
                 "on_header_end", "on_headers_finished", "on_end")
        self._parser = MultipartParser(params[b"boundary"], {n: getattr(self, "_" + n) for n in names})

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise InvalidInput("body: is not valid multipart/form-data", field="body") from None

    def finish(self) -> Received:
        self._parser.finalize()
        if not self._ended:  # a body cut short must not become a shorter asset
            raise InvalidInput("body: the multipart body ended before its closing boundary", field="body")
        if self._path is None or self._file is None:
            raise InvalidInput("file: is required (the part holding the bytes)", field="file")
        self._file.close()
        return Received(Path(self._path), self.size, self._hasher.hexdigest(), self.fields)

    def discard(self) -> None:
        """Remove the spooled file (after it is stored, or when the upload is refused)."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)

    # --- the parser's callbacks ---

    def _on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidInput(f"body: more than {MAX_PARTS} parts", field="body")
        self._headers, self._name, self._value = {}, None, bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def _on_header_end(self) -> None:
        self._header = b""

    def _on_headers_finished(self) -> None:
        _, params = self._parse_options(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self._file is not None:
                raise InvalidInput("file: send one file per upload", field="file")
            from blake3 import blake3

            fd, self._path = tempfile.mkstemp(prefix="v2-asset-", suffix=".part")
            self._file, self._hasher = os.fdopen(fd, "wb"), blake3()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name != FILE_FIELD:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidInput(f"{self._name}: is longer than {MAX_FIELD_BYTES} bytes", field=self._name)
            return
        self.size += len(chunk)
        if self.size > self.cap:
            raise BodyTooLarge(f"file: larger than the {self.cap} byte limit for one asset", field="file")
        self._hasher.update(chunk)
        self._file.write(chunk)

    def _on_end(self) -> None:
        self._ended = True

    def _on_part_end(self) -> None:
        if self._name and self._name != FILE_FIELD:
            self.fields.setdefault(self._name, []).append(self._value.decode("utf-8", "replace"))
