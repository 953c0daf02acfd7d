"""Attacks on the worker through Redis: forged jobs must never run code, and the worker keeps answering.

Anyone who can write to Redis can put a job hash on a model queue. Each test forges one the way an
attacker would (raw hash fields, no brandbot code involved) against a real `brandbot worker`.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import DoneEvent, GenerationRequest, parse_reply_event
from brandbot.queue import JOB_FUNCTION
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.forged_hooks import HOOK_RAN_KEY
from tests.test_worker_process import a_request, enqueue, wait_for
from worker.admission import refusal

HOOK = "tests.forged_hooks.leave_mark"
TERMINAL = {b"failed", b"finished", b"stopped", b"canceled"}


def model_queue(client: redis.Redis) -> Queue:
    return Queue(keys.model_queue("default"), connection=client, serializer=JSONSerializer)


def forge(client: redis.Redis, job_id: str, payload: Any, **fields: str | bytes) -> None:
    """Write a job hash as RQ would, overwrite `fields` raw, then push its id onto the model queue."""
    queue = model_queue(client)
    job = queue.create_job(JOB_FUNCTION, args=(payload,), job_id=job_id, result_ttl=600, failure_ttl=600)
    job.save()
    if fields:
        client.hset(job.key, mapping=fields)
    queue.push_job_id(job_id)


def status_of(client: redis.Redis, job_id: str) -> bytes | None:
    return client.hget(f"rq:job:{job_id}", "status")


def wait_until_settled(client: redis.Redis, *job_ids: str) -> None:
    for job_id in job_ids:
        wait_for(lambda job_id=job_id: status_of(client, job_id) in TERMINAL, 30, f"job {job_id} to end")


def reply_events(client: redis.Redis, request_id: str) -> list[object]:
    return [parse_reply_event(f[b"event"]) for _id, f in client.xrange(keys.reply_stream(request_id))]


def answers_next_question(client: redis.Redis, settings: Settings) -> None:
    good = a_request("are you still there?")
    enqueue(settings, good)
    wait_for(
        lambda: any(isinstance(e, DoneEvent) for e in reply_events(client, good.request_id)),
        30,
        "the next real question to be answered",
    )


class Pickled:
    """Unpickling this runs `touch <marker>`: what a forged pickle payload would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[str]]]:
    """An HTTP endpoint on 127.0.0.1 that records every request a forged webhook makes."""
    received: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_forged_function_is_not_run_and_the_next_question_is_answered(
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    model_queue(redis_client).enqueue("os.system", f"touch {marker}", job_id="forged-os-system")
    wait_until_settled(redis_client, "forged-os-system")
    assert status_of(redis_client, "forged-os-system") == b"failed"
    assert not marker.exists(), "the worker ran os.system from a forged job"
    assert "forged-os-system" in model_queue(redis_client).failed_job_registry.get_job_ids()
    answers_next_question(redis_client, settings())
    log = worker_process.log()
    assert "forged-os-system" in log and "touch" not in log and str(marker) not in log


def test_junk_data_is_failed_without_running_anything(
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "unpickled"
    valid = a_request("a valid question").model_dump(mode="json")
    junk: dict[str, bytes] = {
        "junk-not-json": b"\x00\xffnot json at all",
        "junk-pickle": pickle.dumps((JOB_FUNCTION, None, (Pickled(marker),), {})),
        "junk-pickle-zlib": zlib.compress(pickle.dumps(Pickled(marker))),
        "junk-json-object": json.dumps({"func": JOB_FUNCTION}).encode(),
        "junk-instance-method": json.dumps([JOB_FUNCTION, {"x": 1}, [valid], {}]).encode(),
        "junk-extra-kwargs": json.dumps([JOB_FUNCTION, None, [valid], {"evil": True}]).encode(),
    }
    for job_id, data in junk.items():
        forge(redis_client, job_id, valid, data=data)
    wait_until_settled(redis_client, *junk)
    for job_id in junk:
        assert status_of(redis_client, job_id) == b"failed", job_id
        assert reply_events(redis_client, job_id) == [], f"{job_id} was run"
    assert not marker.exists(), "forged pickle data was unpickled"
    answers_next_question(redis_client, settings())


def test_callbacks_webhooks_and_dependencies_on_a_valid_job_are_refused(
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    webhook_receiver: tuple[str, list[str]],
) -> None:
    url, received = webhook_receiver
    hooks: dict[str, dict[str, str]] = {
        "success_callback_name": {"success_callback_name": HOOK},
        "failure_callback_name": {"failure_callback_name": HOOK},
        "stopped_callback_name": {"stopped_callback_name": HOOK},
        "webhooks": {
            "webhooks": json.dumps(
                [{"url": f"{url}/{status}", "job_status": status} for status in ("finished", "failed")]
            )
        },
        "dependency_ids": {"dependency_ids": json.dumps(["some-other-job"])},
    }
    requests: dict[str, GenerationRequest] = {}
    for field, fields in hooks.items():
        request = a_request(f"a question with a forged {field}")
        requests[field] = request
        forge(redis_client, request.request_id, request.model_dump(mode="json"), **fields)
    wait_until_settled(redis_client, *(r.request_id for r in requests.values()))
    for field, request in requests.items():
        assert status_of(redis_client, request.request_id) == b"failed", f"{field}: job not failed"
        assert reply_events(redis_client, request.request_id) == [], f"a job naming {field} was run"
    answers_next_question(redis_client, settings())
    time.sleep(0.5)  # webhooks are sent after the job's status is saved
    assert redis_client.lrange(HOOK_RAN_KEY, 0, -1) == [], "a forged callback ran"
    assert received == [], "a forged webhook was called"


def test_a_failing_job_runs_no_forged_failure_callback(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    """A payload the contract rejects fails the job: that failure must not run a callback the hash names."""
    forge(redis_client, "bad-payload", {"turns": "not a list"}, failure_callback_name=HOOK)
    wait_until_settled(redis_client, "bad-payload")
    assert status_of(redis_client, "bad-payload") == b"failed"
    answers_next_question(redis_client, settings())
    assert redis_client.lrange(HOOK_RAN_KEY, 0, -1) == [], "a forged failure callback ran"


def test_abandoned_forged_job_runs_no_callback_during_recovery(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    """Registry cleanup (a dead worker's jobs) runs failure callbacks in RQ: a forged entry must not."""
    queue = model_queue(redis_client)
    job = queue.create_job(JOB_FUNCTION, args=(a_request("abandoned").model_dump(mode="json"),))
    job.save()
    redis_client.hset(job.key, mapping={"status": "started", "failure_callback_name": HOOK})
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:forged-execution": 1})
    start_worker(**{"recovery_interval_seconds": 0.5})
    wait_for(lambda: status_of(redis_client, job.id) != b"started", 30, "the abandoned job to be recovered")
    answers_next_question(redis_client, settings())
    assert redis_client.lrange(HOOK_RAN_KEY, 0, -1) == [], "a forged failure callback ran during recovery"


def test_unreadable_job_records_do_not_stop_the_job_slots(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    """A hash RQ cannot parse (a bogus status, timeout or date) used to end the slot that dequeued it."""
    start_worker(worker_concurrency=2)
    unreadable = {
        "bogus-status": {"status": "pwned"},
        "bogus-timeout": {"timeout": "soon"},
        "bogus-date": {"created_at": "yesterday"},
    }
    for job_id, fields in unreadable.items():
        forge(redis_client, job_id, a_request("unreadable").model_dump(mode="json"), **fields)
    wait_for(lambda: redis_client.llen(model_queue(redis_client).key) == 0, 30, "the forged jobs to be taken")
    answers_next_question(redis_client, settings())
    answers_next_question(redis_client, settings())
    for job_id in unreadable:
        assert status_of(redis_client, job_id) == b"failed", job_id


def raw_hash_of(client: redis.Redis, **fields: str | bytes) -> dict[str, bytes]:
    """A job hash as the front-end's queue writes it (never pushed), with `fields` overwritten."""
    job = model_queue(client).create_job(JOB_FUNCTION, args=(a_request("hi").model_dump(mode="json"),))
    job.save()
    if fields:
        client.hset(job.key, mapping=fields)
    return {key.decode(): value for key, value in client.hgetall(job.key).items()}


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({}, False),
        ({"webhooks": "[]", "success_callback_name": ""}, False),  # RQ's own "none" values
        ({"success_callback_name": HOOK}, True),
        ({"failure_callback_name": HOOK}, True),
        ({"stopped_callback_name": HOOK}, True),
        ({"webhooks": json.dumps([{"url": "http://x/", "job_status": "failed"}])}, True),
        ({"dependency_id": "other"}, True),
        ({"dependency_ids": '["other"]'}, True),
        ({"data": zlib.compress(json.dumps(["os.system", None, ["id"], {}]).encode())}, True),
        ({"data": json.dumps([JOB_FUNCTION, None, [{}], {}]).encode()}, False),  # uncompressed is RQ's too
        ({"data": json.dumps([JOB_FUNCTION, None, ["text"], {}]).encode()}, True),
        ({"data": json.dumps([JOB_FUNCTION, None, [{}, {}], {}]).encode()}, True),
        ({"data": b""}, True),
        ({"data": b"[" * 100_000}, True),  # deeper than json's recursion limit
    ],
)
def test_refusal_reads_the_raw_hash(
    redis_client: redis.Redis, fields: dict[str, str | bytes], refused: bool
) -> None:
    reason = refusal(raw_hash_of(redis_client, **fields))
    assert (reason is not None) == refused
    assert reason is None or (HOOK not in reason and "os.system" not in reason)  # field names only
