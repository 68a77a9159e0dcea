"""Text the ComfyUI frontend rewrites when it queues a prompt, done the same way at conversion.

- Dynamic prompts (inputs flagged `dynamicPrompts`): C-style comments are stripped, then every `{a|b|c}`
  group, nested ones included, becomes one of its options at random; `\\{ \\} \\|` stay literal.
- Save-node `filename_prefix`: `%date:FMT%` becomes the time (UTC here; the browser uses local time) and
  `%Node.widget%` a widget's value (Node is a node's "Node name for S&R" or title).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

SAVE_NODE_TYPES = frozenset({
    "SaveImage", "SaveImageAdvanced", "SaveSVGNode", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio",
    "SaveAudioMP3", "SaveAudioOpus", "SaveAudioAdvanced", "SaveGLB", "SaveAnimatedPNG", "CLIPSave", "VAESave",
    "ModelSave", "LoraSave", "SaveLatent"})
_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
_UNSAFE_IN_NAMES = re.compile(r'[/?<>\\:*|"\x00-\x1f\x7f]')
_DATE_TOKENS = re.compile(r"yyyy|yy|MM?|dd?|hh?|mm?|ss?")


class _Reader:
    """A cursor over the text for the recursive {a|b} parser."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def take(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "\\" and self.pos < len(self.text):  # keep escapes as they are until the end
            ch += self.text[self.pos]
            self.pos += 1
        return ch

    @property
    def more(self) -> bool:
        return self.pos < len(self.text)


def dynamic_prompt(text: str, rng: random.Random) -> str:
    """The frontend's processDynamicPrompt."""
    reader = _Reader(_COMMENTS.sub("", text))
    out = ""
    while reader.more:
        ch = reader.take()
        out += _group(reader, rng) if ch == "{" else ch
    return re.sub(r"\\([{}|])", r"\1", out)


def _group(reader: _Reader, rng: random.Random) -> str:
    options, current, depth = [], "", 0
    while reader.more:
        ch = reader.take()
        if ch == "{":
            depth += 1
        elif ch == "}":
            if not depth:
                break
            depth -= 1
        elif ch == "|" and not depth:
            options.append(current)
            current = ""
            continue
        current += ch
    options.append(current)
    chosen = _Reader(rng.choice(options))
    out = ""
    while chosen.more:
        ch = chosen.take()
        out += _group(chosen, rng) if ch == "{" else ch
    return out


def _date(fmt: str, now: datetime) -> str:
    parts = {"M": now.month, "d": now.day, "h": now.hour, "m": now.minute, "s": now.second}

    def token(m: re.Match) -> str:
        tok = m.group(0)
        if tok.startswith("y"):
            return str(now.year) if tok == "yyyy" else str(now.year)[2:]
        return str(parts[tok[0]]).zfill(len(tok))
    return _DATE_TOKENS.sub(token, fmt)


def replace_in_filename(value: str, lookup: Callable[[str, str], Any], now: datetime) -> str:
    """%date:FMT% and %Node.widget% in a save node's filename_prefix; other %...% are left for ComfyUI."""
    def sub(m: re.Match) -> str:
        text = m.group(1)
        parts = text.split(".")
        if len(parts) != 2:
            return _date(text[5:], now) if text.startswith("date:") else m.group(0)
        found = lookup(*parts)
        return m.group(0) if found is None else _UNSAFE_IN_NAMES.sub("_", str(found))
    return re.sub(r"%([^%]+)%", sub, value)
