"""Keep secrets out of logs, errors and reprs.

Registry URLs can carry secrets in two places: userinfo (``https://user:pass@host``) and the
query (upload ``_state`` tokens, pre-signed storage redirects with ``X-Amz-Signature`` /
``sig`` / ``token``). :func:`redact_url` keeps only query parameters known to be harmless (the
distribution API's own ``digest``, ``mount``, ``from``, ``n``, ``last``) and replaces every
other value; :func:`redact_text` scrubs ``Basic``/``Bearer`` credentials and JWT-looking
strings from free text such as a registry's error body.
"""

from __future__ import annotations

import re

from yarl import URL

__all__ = ["redact_text", "redact_url"]

REDACTED = "REDACTED"
# Query parameters of the distribution API that never hold a secret.
_SAFE_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})
_AUTH_VALUE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact_url(url: URL | str) -> str:
    """``url`` without userinfo and with non-API query values replaced by ``REDACTED``."""
    try:
        parsed = URL(str(url))
    except ValueError:
        return redact_text(str(url))
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(None)
    if parsed.query:
        parsed = parsed.with_query(
            [(k, v if k in _SAFE_QUERY_KEYS else REDACTED) for k, v in parsed.query.items()]
        )
    return str(parsed)


def redact_text(text: str) -> str:
    """``text`` with ``Basic …``/``Bearer …`` values, JWTs and URL userinfo removed."""
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    return _USERINFO.sub(f"{REDACTED}@", text)
