"""Secrets out of everything metricsmith writes or keeps: API keys, auth headers, credentials in URLs.

A reply from the model is scrubbed as it arrives (`agent.llm.model.ModelReply`), so a key a server echoes
reaches neither the transcript nor the metric file, its rationale or the library; every transcript line
is scrubbed again before it is written (`agent.llm.transcript`), and error messages before they are shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "clean_reply_text", "scrub_secrets", "scrub_text"]

REDACTED = "[REDACTED]"

_SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "AUTH")
_MIN_SECRET_LENGTH = 8

# Order matters: header values are redacted whole first, so a Bearer token inside one is already gone.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: Basic abc`, `"Authorization": "Bearer x"`, `x-api-key=...`: the value runs to the end
    # of the line, because header values may contain spaces and we would rather redact too much.
    (
        # A value already redacted is left as it is: scrubbed again, the text after it (an error line's advice,
        # appended to a quoted server reply) was cut off.
        re.compile(r"""(?i)\b((?:proxy-)?authorization|x-api-key)(["']?\s*[:=]\s*+)(?!\[REDACTED\])[^\r\n]+"""),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"), r"\1" + REDACTED),
    # Vendor key shapes: OpenAI/Anthropic `sk-`, Hugging Face `hf_`, GitHub, AWS access key ids, Slack.
    # The minimum lengths keep words like "sk-learn" out.
    (re.compile(r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    # Credentials in a URL: `https://user:password@host` (or a token as the user name), and secret-named query
    # parameters (`?api_key=...`), which a --base-url may carry into an error message.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@\"'<>]+@"), r"\1" + REDACTED + "@"),
    (
        re.compile(
            r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|secret|password|passwd|auth|sig|signature)=)"
            r"[^&#\s\"'<>]+"
        ),
        r"\1" + REDACTED,
    ),
)


def _environment_secrets(environ: Mapping[str, str]) -> re.Pattern[str] | None:
    values = {
        value
        for name, value in environ.items()
        if len(value) >= _MIN_SECRET_LENGTH and any(part in name.upper() for part in _SECRET_NAME_PARTS)
    }
    if not values:
        return None
    # Longest first, so a secret that contains another secret is redacted whole.
    return re.compile("|".join(re.escape(value) for value in sorted(values, key=lambda v: (-len(v), v))))


def _scrub_text(text: str, environment: re.Pattern[str] | None) -> str:
    if environment is not None:
        text = environment.sub(REDACTED, text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret replaced by REDACTED, as `scrub_secrets` does in each string."""
    return _scrub_text(text, _environment_secrets(os.environ if environ is None else environ))


def scrub_secrets(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of the JSON-able `obj` with every secret in every string (keys too) replaced by REDACTED.

    `environ` defaults to `os.environ`; the values of variables whose names contain KEY, TOKEN, SECRET,
    PASSWORD or AUTH count as secrets when they are at least 8 characters long. Tuples come back as
    lists. Applying it twice gives the same result as once.
    """
    environment = _environment_secrets(os.environ if environ is None else environ)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return _scrub_text(value, environment)
        if isinstance(value, Mapping):
            return {walk(key) if isinstance(key, str) else key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    return walk(obj)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_reply_text(text: str) -> str:
    """A model's text as metricsmith keeps it: secrets scrubbed, and lone UTF-16 surrogates (which a JSON
    reply may carry as escapes, and which no UTF-8 file can hold) replaced by U+FFFD."""
    return scrub_text(_LONE_SURROGATE.sub("\ufffd", text))
