"""The backends behind `agent.llm.model.ModelBackend`: real ones (`openai`, `local`) beside the ones that
replay a transcript (`replay`) or a script (`scripted`), all with the same one method."""

from __future__ import annotations

import urllib.parse

__all__ = ["server_url_problem"]


def server_url_problem(url: str) -> str | None:
    """Why no request can go to `url` (as a phrase), or None: for a check before any request, in the words of
    whichever flag, variable or config key gave it. Without it, such a URL was retried as a dead server, or
    raised inside the HTTP client."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "it must start with http:// or https://"
        if not parts.hostname:
            return "it names no host"
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as error:
        return str(error)
    return None
