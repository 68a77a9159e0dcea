"""Who is calling: API keys from the settings, checked in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

from comfy_saas.config import Settings
from comfy_saas.config.pools import NAME
from comfy_saas.errors import Unauthorized
from comfy_saas.jobs.operations import Caller


class ApiKey(NamedTuple):
    key: str
    user: str | None = None
    pools: tuple[str, ...] | None = None


def parse_api_keys(spec: str) -> list[ApiKey]:
    """`key`, `key:user`, `key@pool1|pool2` or `key:user@pool1|pool2`, comma-separated. The text after the last
    `@` is a pool list when it is made of pool names, so a user id like `alice@example.com` stays whole."""
    keys = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        head, at, tail = part.rpartition("@")
        pools = tuple(tail.split("|")) if at and all(NAME.match(p) for p in tail.split("|")) else None
        key, _, user = (head if pools else part).partition(":")
        keys.append(ApiKey(key, user or None, pools))
    return keys


def authenticate(settings: Settings, authorization: str | None) -> Caller:
    """The caller for an `Authorization: Bearer <key>` header; Unauthorized otherwise."""
    keys = parse_api_keys(settings.api_keys)
    if not keys and not settings.require_auth:
        return Caller(key_id="anonymous")
    if not keys:
        raise Unauthorized("no API keys are configured on this server (set COMFY_API_KEYS)")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send an Authorization: Bearer <API key> header")
    match = None
    for entry in keys:  # compare against every key, so timing says nothing about which one matched
        if hmac.compare_digest(entry.key.encode(), presented.strip().encode()):
            match = entry
    if match is None:
        raise Unauthorized("the API key is not valid")
    return Caller(key_id=hashlib.sha256(match.key.encode()).hexdigest()[:12], user_id=match.user, pools=match.pools)
