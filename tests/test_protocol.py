"""The wire protocol: what the host sends parses as the documented frames; what it refuses, it refuses."""

from __future__ import annotations

import pytest

from sandbox.framing import FrameReader, ProtocolViolation, encode_frame
from sandbox.protocol import Call, ChunkFrame, ImageTask, ResultsFrame, decode_worker_frame, encode_chunk


def test_encoded_chunk_is_a_valid_chunk_frame() -> None:
    scene = {"image": {"id": 3, "file_name": "a.png", "width": 4, "height": 2}, "annotations": [{"id": 9}]}
    tasks = [ImageTask(image_id=3, path="/data/a.png", scene=scene, calls=(Call(0, None), Call(1, 0)))]
    (body,) = FrameReader().feed(encode_chunk(7, tasks))
    frame = ChunkFrame.model_validate_json(body)
    assert frame.chunk == 7
    assert frame.tasks[0].calls == (Call(0, None), Call(1, 0))
    assert frame.tasks[0].scene == scene


def test_results_rows_are_checked() -> None:
    frame = decode_worker_frame(b'{"t":"results","chunk":1,"rows":[{"score":0.5},{"score":null,"kind":"timeout"}]}')
    assert isinstance(frame, ResultsFrame)
    assert frame.rows[0]["score"] == 0.5 and frame.rows[1]["kind"] == "timeout"


@pytest.mark.parametrize(
    "body",
    [
        b'{"t":"results","chunk":1,"rows":[{"score":NaN}]}',
        b'{"t":"results","chunk":1,"rows":[{"score":1e999}]}',
        b'{"t":"results","chunk":1,"rows":[{"score":1.0,"extra":1}]}',
        b'{"t":"results","chunk":1,"rows":[{"score":null,"kind":"made_up"}]}',
        b'{"t":"pickle","data":"gASV"}',
        b"\x80\x04\x95 not json",
    ],
)
def test_bad_worker_frames_are_protocol_violations(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_worker_frame(body)


def test_frame_reader_refuses_oversized_frames_and_splits_joined_ones() -> None:
    reader = FrameReader()
    joined = encode_frame({"a": 1}) + encode_frame({"b": 2})
    assert reader.feed(joined[:5]) == []
    assert reader.feed(joined[5:]) == [b'{"a":1}', b'{"b":2}']
    with pytest.raises(ProtocolViolation):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_frames_before_junk_are_kept_with_the_violation() -> None:
    """Results a worker wrote before junk are genuine; the host must count them before blaming a call."""
    from sandbox.framing import FrameReader, ProtocolViolation, encode_frame

    good = encode_frame({"t": "results", "chunk": 1, "rows": [{"score": 1.0}], "done": True})
    reader = FrameReader()
    with pytest.raises(ProtocolViolation, match="byte frame") as caught:
        reader.feed(good + b"\xff\xfe GARBAGE, not a frame" * 8)
    assert len(caught.value.bodies) == 1 and good.endswith(caught.value.bodies[0])
