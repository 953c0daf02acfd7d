"""A reply's events reach its stream in order and exactly once, whatever Redis does meanwhile.

Real Redis throughout: a private redis-server that is made full (OOM) or read-only (a replica, as after a
failover), and a TCP proxy in front of the test Redis that loses one request or one answer on the wire.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from brandbot import keys
from brandbot.contract import DeltaEvent, ReplyEvent, StartEvent, parse_reply_event
from brandbot.errors import RepliesUnpublishable
from tests.conftest import TEST_REDIS_URL, PrivateRedis, free_port
from worker.replies import ReplyPublisher, redis_unavailable

START = StartEvent(attempt=1)
FIRST, SECOND = DeltaEvent(attempt=1, text="Hello"), DeltaEvent(attempt=1, text=" world")


class LossyProxy:
    """A TCP proxy to Redis that can drop the next request (never arrives) or the next answer (lost)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lose_next_request = False
        self.lose_next_answer = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, "request"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "answer"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, kind: str) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            lose = data and getattr(self, f"lose_next_{kind}")
            if lose:
                setattr(self, f"lose_next_{kind}", False)
            if not data or lose:
                for end in (source, sink):
                    end.close()
                return
            sink.sendall(data)


@pytest.fixture
def lossy_proxy(redis_client: redis.Redis) -> Iterator[LossyProxy]:
    proxy = LossyProxy(urlparse(TEST_REDIS_URL).port or 6379)
    yield proxy
    proxy.close()


def publisher_at(url: str, *, outage_seconds: float = 30.0) -> ReplyPublisher:
    # As in `brandbot worker`: no automatic retry, a lost answer is settled by the writer itself.
    connection = redis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    return ReplyPublisher(connection, retention_seconds=600, outage_seconds=outage_seconds)


def via(proxy: LossyProxy) -> str:
    parsed = urlparse(TEST_REDIS_URL)
    return parsed._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


def stream_of(client: redis.Redis, request_id: str) -> list[ReplyEvent]:
    return [parse_reply_event(f[b"event"]) for _id, f in client.xrange(keys.reply_stream(request_id))]


@pytest.mark.parametrize("lost", ["request", "answer"])
def test_a_write_lost_on_the_wire_appears_once_when_sent_again(
    lossy_proxy: LossyProxy, redis_client: redis.Redis, lost: str
) -> None:
    writer = publisher_at(via(lossy_proxy)).writer("r1")
    writer.send_and_wait(START)
    setattr(lossy_proxy, f"lose_next_{lost}", True)
    assert writer.send(FIRST) is False  # kept: whether Redis has it is unknown
    assert len(stream_of(redis_client, "r1")) == (2 if lost == "answer" else 1)
    writer.send_and_wait(SECOND)
    assert stream_of(redis_client, "r1") == [START, FIRST, SECOND]
    assert 0 < redis_client.ttl(keys.reply_stream("r1")) <= 600


@pytest.mark.parametrize("refusal", ["full", "read-only"])
def test_a_redis_refusing_writes_for_a_while_delays_the_reply_but_loses_nothing(
    private_redis: PrivateRedis, refusal: str
) -> None:
    admin = redis.Redis(port=private_redis.port)
    writer = publisher_at(private_redis.url).writer("r1")
    writer.send_and_wait(START)
    if refusal == "full":
        admin.config_set("maxmemory", 1)  # noeviction (the default): every write is refused with OOM
    else:
        admin.replicaof("127.0.0.1", free_port())  # a replica (after a failover): READONLY
    assert writer.send(FIRST) is False
    if refusal == "full":
        admin.config_set("maxmemory", 0)
    else:
        admin.replicaof("NO", "ONE")
    writer.send_and_wait(SECOND)
    assert stream_of(admin, "r1") == [START, FIRST, SECOND]


def test_redis_gone_longer_than_a_reply_may_wait_ends_the_reply() -> None:
    nobody_listening = f"redis://127.0.0.1:{free_port()}/0"
    writer = publisher_at(nobody_listening, outage_seconds=0.5).writer("r1")
    with pytest.raises(RepliesUnpublishable):
        writer.send_and_wait(START)


def test_only_unavailability_counts_as_an_outage_not_a_wrong_command() -> None:
    assert redis_unavailable(redis.ConnectionError("refused"))
    assert redis_unavailable(redis.TimeoutError("silent"))
    assert redis_unavailable(redis.exceptions.OutOfMemoryError("command not allowed when used memory > …"))
    assert redis_unavailable(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert redis_unavailable(redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"))
    assert not redis_unavailable(redis.ResponseError("WRONGTYPE Operation against a key of the wrong kind"))
