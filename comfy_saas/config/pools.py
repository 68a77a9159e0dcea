"""The worker pools as the running service sees them: which pools a job may name, how many drains each keeps
(floor) and allows (ceiling), and the longest job it can run. deploy.toml is the source; at deploy time it is
written into COMFY_POOLS (and per-pool GPU overrides are read from COMFY_POOL_GPUS).

    COMFY_POOLS="default:floor=0:ceiling=4:max_timeout_s=6900,video:floor=1:ceiling=2"
    COMFY_POOL_GPUS="default=H100,A100-80GB;video=H100"
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields

NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")  # a queue partition and part of a Modal class name
DEFAULT_CEILING = 4  # Modal's own default for a pool nobody sized


@dataclass(frozen=True)
class PoolSpec:
    """One pool: its name, the drains kept pulling even when idle (floor), the most that run at once
    (ceiling), and the longest job timeout its workers can honour (None: no cap beyond the limits)."""

    name: str
    floor: int = 0
    ceiling: int = DEFAULT_CEILING
    max_timeout_s: int | None = None


def _entry(raw: str) -> PoolSpec:
    name, *options = (p.strip() for p in raw.split(":"))
    if not NAME.match(name):
        raise ValueError(f"pool name {name!r}: use 1-31 lowercase letters, digits and _, starting with a letter")
    known = {f.name for f in fields(PoolSpec)} - {"name"}
    values: dict[str, int] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in known or not value.isdigit():
            raise ValueError(f"pool {name!r}: {option!r} is not one of {', '.join(sorted(known))} = <whole number>")
        values[key] = int(value)
    spec = PoolSpec(name, **values)
    if spec.ceiling < 1 or spec.floor > spec.ceiling:
        raise ValueError(f"pool {name!r}: need 0 <= floor <= ceiling and ceiling >= 1")
    return spec


def parse_pools(spec: str) -> dict[str, PoolSpec]:
    """`name[:key=value...]` entries, comma-separated -> {name: PoolSpec}; ValueError naming the bad part."""
    pools: dict[str, PoolSpec] = {}
    for raw in (p for p in spec.split(",") if p.strip()):
        entry = _entry(raw)
        if entry.name in pools:
            raise ValueError(f"pool {entry.name!r} is listed twice")
        pools[entry.name] = entry
    if not pools:
        raise ValueError("no pools are listed")
    return pools


def format_pools(pools: Iterable[PoolSpec]) -> str:
    """The COMFY_POOLS value for these pools (the inverse of parse_pools)."""
    out = []
    for p in pools:
        options = [f"floor={p.floor}", f"ceiling={p.ceiling}"]
        if p.max_timeout_s is not None:
            options.append(f"max_timeout_s={p.max_timeout_s}")
        out.append(":".join([p.name, *options]))
    return ",".join(out)


def parse_pool_gpus(spec: str) -> dict[str, list[str]]:
    """`pool=GPU,GPU;pool2=GPU` -> {pool: [GPU, ...]} (GPU names may carry a count, e.g. H100:2)."""
    out: dict[str, list[str]] = {}
    for raw in (p for p in spec.split(";") if p.strip()):
        pool, sep, gpus = raw.partition("=")
        chosen = [g.strip() for g in gpus.split(",") if g.strip()]
        if not sep or not NAME.match(pool.strip()) or not chosen:
            raise ValueError(f"{raw.strip()!r}: write pool=GPU,GPU (pools separated by ;)")
        out[pool.strip()] = chosen
    return out
