"""Length-prefixed JSON frames: the byte level of the host–worker protocol.

Kept free of pydantic so the worker, which imports it, starts fast; the host validates what it
reads with the models in `sandbox.protocol`. Frames are parsed with orjson: strict JSON (NaN and
Infinity are refused) and several times faster than the standard library on scenes full of polygons.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import orjson

MAX_FRAME_BYTES = 32 * 1024 * 1024
# The longest feature vector a feature metric may return: here, not in protocol, because the
# worker checks it too and imports no pydantic.
MAX_FEATURES = 1024
# Separates a failed call's error from what the metric printed during the call (head and tail).
PRINTED_MARKER = "\n--- printed by the metric during this call ---\n"
_LENGTH = struct.Struct(">I")


class ProtocolViolation(Exception):
    """The worker sent something that is not a valid frame. The host kills it.

    `bodies` holds the complete frames that arrived before the bad bytes: they are genuine
    results (the worker wrote them before the junk), and the host must count them before it
    decides which call to blame.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.bodies: list[bytes] = []


def frame_bytes(body: bytes) -> bytes:
    """One frame around an already serialised JSON body, length prefix included."""
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    return _LENGTH.pack(len(body)) + body


def encode_frame(message: dict) -> bytes:
    """Serialise one frame from plain data, with orjson: a twentieth of the standard library's time on
    rows of numbers (a worker sends a row per call, a feature metric 100 numbers or more in each).

    orjson writes NaN and infinity as null rather than refuse them: every number a worker sends is a
    score or a feature it checked finite first (`sandbox.worker._as_score`, `_as_features`). A string
    that UTF-8 can't hold (a lone surrogate in a metric's error or in what it printed) goes with that
    character written out as its escape, as text: in the frame, it would make the whole frame invalid.
    """
    try:
        return frame_bytes(orjson.dumps(message))
    except TypeError:  # orjson refuses a lone surrogate, as the host's parser would
        return frame_bytes(orjson.dumps(_utf8_safe(message)))


def _utf8_safe(value: Any) -> Any:
    """`value` with every string's lone surrogates written as their backslash escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _utf8_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8_safe(item) for item in value]
    return value


class FrameReader:
    """Accumulates bytes from a pipe and yields complete frame bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete bodies now buffered. On a bad header, ProtocolViolation carries the bodies before it."""
        self._buffer += data
        bodies: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME_BYTES:
                violation = ProtocolViolation(f"worker announced a {length}-byte frame; the limit is {MAX_FRAME_BYTES}")
                violation.bodies = bodies
                raise violation
            if len(self._buffer) < _LENGTH.size + length:
                break
            bodies.append(bytes(self._buffer[_LENGTH.size : _LENGTH.size + length]))
            del self._buffer[: _LENGTH.size + length]
        return bodies


def read_frame_blocking(fd: int) -> dict | None:
    """Worker side: read one host frame from a blocking fd. None at end of input."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    body = _read_exactly(fd, length)
    if body is None:
        return None
    return orjson.loads(body)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        piece = os.read(fd, size - len(chunks))
        if not piece:
            return None
        chunks += piece
    return bytes(chunks)
