"""Who is calling the native API. ComfyUI tools present our API key in one of several ways; each becomes the
Bearer header web/auth.py checks, so the key rules (constant-time match, users, pools) are the same as /v1.

Accepted, first found wins: `Authorization: Bearer <key>`, `Authorization: Basic` with the key as password
(any user name), `?token=<key>`, and the `/k/<key>/` path prefix. Without keys configured and with anonymous
access allowed, nothing is needed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from comfy_saas.config import Settings
from comfy_saas.jobs.operations import Caller
from comfy_saas.web.auth import authenticate


def presented_key(authorization: str | None, token: str | None, prefix_key: str | None) -> str | None:
    """The API key the request carries, in whichever form; None when it carries none. An Authorization header
    that holds no key (not Bearer, undecodable Basic) does not hide a ?token= or /k/ key."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and (key := _basic_key(value.strip())):
        return key
    return token or prefix_key or None


def _basic_key(value: str) -> str | None:
    """The key of a Basic credential: its password, or for `key` alone (no colon) the whole of it."""
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (password if colon else user) or None


def native_caller(settings: Settings, headers: Mapping[str, str], query: Mapping[str, str],
                  prefixes: Mapping[str, str]) -> Caller:
    """The caller, or Unauthorized (as on /v1)."""
    key = presented_key(headers.get("authorization"), query.get("token"), prefixes.get("key"))
    return authenticate(settings, f"Bearer {key}" if key else None)


def owner_of(caller: Caller) -> str:
    """Whose native state this is: the key's user, or for a key bound to no user the key itself, so two keys'
    prompts, queues and uploads never mix even where /v1 would let an unbound key see every job."""
    return f"user/{caller.user_id}" if caller.user_id is not None else f"key/{caller.key_id}"
