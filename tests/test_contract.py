"""The contract between tiers: JSON in both directions, strict about what it accepts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FinishReason,
    GenerationRequest,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    Usage,
    UserRef,
    parse_reply_event,
    reply_event_adapter,
)


def a_request(**overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "target": ReplyTarget(platform=Platform.SLACK, channel_id="C1", thread_id="1.2"),
        "user": UserRef(id="U1", display_name="Ada"),
        "persona": "default",
        "turns": [Turn(role=Role.USER, content="hello")],
        **overrides,
    }
    return GenerationRequest(**values)  # type: ignore[arg-type]


def test_request_survives_a_json_round_trip() -> None:
    request = a_request()
    wire = json.dumps(request.model_dump(mode="json"))
    assert GenerationRequest.model_validate(json.loads(wire)) == request


def test_request_rejects_unknown_fields_and_empty_conversations() -> None:
    data = a_request().model_dump(mode="json")
    with pytest.raises(ValidationError, match="extra"):
        GenerationRequest.model_validate({**data, "__reduce__": "os.system"})
    with pytest.raises(ValidationError, match="turns"):
        GenerationRequest.model_validate({**data, "turns": []})


def test_request_id_cannot_smuggle_redis_key_separators() -> None:
    with pytest.raises(ValidationError, match="request_id"):
        a_request(request_id="abc:*")


def test_each_reply_event_parses_back_to_its_own_type() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_ms=10.0)
    events = [
        DeltaEvent(attempt=2, text="Hi"),
        DoneEvent(text="Hi there", finish_reason=FinishReason.DEADLINE, usage=usage),
        ErrorEvent(kind=ErrorKind.ENGINE, message="Sorry"),
    ]
    for event in events:
        assert parse_reply_event(reply_event_adapter.dump_json(event)) == event


def test_unknown_event_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_reply_event(b'{"type": "shell", "cmd": "rm -rf /"}')


def test_lone_surrogates_in_what_people_wrote_become_replacement_characters_and_the_request_encodes() -> None:
    request = a_request(
        user=UserRef(id="U1", display_name="Ada\udc80"),
        channel_name="gen\ud800eral",
        turns=[Turn(role=Role.USER, content="hi \ud800 there \U0001f600", name="\udfffAda")],
    )

    wire = request.model_dump_json().encode("utf-8")  # what goes to Redis

    [turn] = GenerationRequest.model_validate_json(wire).turns
    assert turn.content == "hi \ufffd there \U0001f600" and turn.name == "\ufffdAda"
    assert request.user.display_name == "Ada\ufffd" and request.channel_name == "gen\ufffderal"
