"""Gated model sources: which deployment token goes to which hosts, and URLs shown without credentials.

A token is the deployment's (a setting, never part of a job), sent over https only, to its own source's
hosts only; the download asks again at every redirect hop, so a CDN or any other host never receives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# source -> (its hosts and their subdomains, the Settings field holding its token)
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "huggingface": (("huggingface.co", "hf.co"), "hf_token"),
    "civitai": (("civitai.com",), "civitai_token"),
}
# Query parameters that carry credentials in the wild (signed URLs, API tokens); never shown or stored.
_SECRET_PARAMS = ("token", "key", "sig", "signature", "auth", "credential", "password", "secret", "x-amz-",
                  "x-goog-", "expires", "policy")


def source_of(url: str) -> str | None:
    """The known source whose hosts serve url over https, or None."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme.lower() != "https" or not host:
        return None
    for name, (domains, _) in SOURCES.items():
        if any(host == d or host.endswith("." + d) for d in domains):
            return name
    return None


def headers_for(tokens: Mapping[str, str]) -> Callable[[str], dict[str, str]]:
    """Per-hop headers for a download: `tokens` maps a source to its token (empty tokens are left out)."""
    def hop(url: str) -> dict[str, str]:
        token = tokens.get(source_of(url) or "")
        return {"Authorization": f"Bearer {token}"} if token else {}
    return hop


def tokens_from(settings: object) -> dict[str, str]:
    """Each source's token from the settings fields SOURCES names."""
    return {name: getattr(settings, attr, "") for name, (_, attr) in SOURCES.items()}


def public_url(url: str) -> str:
    """url without user info and without query parameters that look like credentials."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not any(s in k.lower() for s in _SECRET_PARAMS)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
