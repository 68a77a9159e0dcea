"""Who is calling: API keys from the settings, checked in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac

from comfy_saas.config import Settings
from comfy_saas.config.settings import ApiKey, parse_api_keys
from comfy_saas.errors import Unauthorized
from comfy_saas.jobs.operations import Caller

__all__ = ["ApiKey", "authenticate", "parse_api_keys"]


def authenticate(settings: Settings, authorization: str | None) -> Caller:
    """The caller for an `Authorization: Bearer <key>` header; Unauthorized otherwise."""
    keys = parse_api_keys(settings.api_keys)
    if not keys and settings.allow_anonymous:
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
