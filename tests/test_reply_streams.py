"""The front-end's one reply-stream reader: many answers through a few connections, an end to every
wait, and Redis outages ridden out.

Streams are written by the worker's own `ReplyPublisher` over real Redis. Where a relay needs a chat,
`ChatTranscript` stands in for the platform (a list of messages): the platforms' own tests cover them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import psutil  # installed with accelerate (the cpu extra)
import pytest
import redis
import redis.asyncio
from rq.job import Job
from structlog.testing import capture_logs

from bots.inflight import InflightRequests
from bots.relay import ChannelPacer, RelayOutcome, StreamingEditor, relay_reply
from bots.relay_book import RelayBook
from brandbot import keys, messages
from brandbot.contract import DeltaEvent, DoneEvent, FinishReason, GenerationRequest, StartEvent, Usage
from brandbot.errors import QueueUnavailable
from brandbot.queue import CLIENT_NAME, RequestQueue
from brandbot.settings import Settings
from brandbot.streams import RIDE_OUT_SECONDS, Follower, ReplyLost, ReplyStreams
from tests.conftest import TEST_REDIS_URL, PrivateRedis, free_port
from worker.replies import ReplyPublisher

TEST_CLIENT = "brandbot-test"
TEST_DB = int(TEST_REDIS_URL.rsplit("/", 1)[1])


class ChatTranscript:
    """A chat channel as a list of messages (stands in for Slack/Discord in these reader tests)."""

    def __init__(self, channel: str = "C1") -> None:
        self.channel_key = channel
        self.max_chars = 2000
        self.messages: dict[str, str] = {}
        self.calls = 0

    async def post(self, text: str) -> str:
        self.calls += 1
        message_id = str(len(self.messages) + 1)
        self.messages[message_id] = text
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        self.calls += 1
        self.messages[message_id] = text

    async def delete(self, message_id: str) -> None:
        self.calls += 1
        del self.messages[message_id]


def queue_at(
    url: str, *, retention_seconds: int, deadline_seconds: float, ride_out_seconds: float = RIDE_OUT_SECONDS
) -> RequestQueue:
    """The front-end's queue client, as `from_settings` builds it, on a test Redis."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=url,
        retention_seconds=retention_seconds,
        generation_deadline_seconds=deadline_seconds,
    )
    return RequestQueue.from_settings(settings, ride_out_seconds=ride_out_seconds)


def question(request_id: str) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {
            "request_id": request_id,
            "persona": "default",
            "turns": [{"role": "user", "content": "hello"}],
            "target": {"platform": "slack", "channel_id": "C1"},
            "user": {"id": "U1"},
        }
    )


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def done(text: str) -> DoneEvent:
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_ms=1.0)
    return DoneEvent(text=text, finish_reason=FinishReason.STOP, usage=usage)


def ours(client: redis.Redis, db: int) -> list[dict[str, str]]:
    """CLIENT LIST's entries for this process's connections to `db` (other processes share the server)."""
    ports = {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.laddr}
    clients: list[dict[str, str]] = client.client_list()  # type: ignore[assignment]
    return [e for e in clients if e.get("db") == str(db) and int(e["addr"].rsplit(":", 1)[1]) in ports]


def front_end_connections(client: redis.Redis) -> int:
    """Connections the front-end's queue client holds open (named by it in CLIENT LIST)."""
    return sum(1 for entry in ours(client, TEST_DB) if entry.get("name") == CLIENT_NAME)


def connections_on_db(client: redis.Redis, db: int) -> int:
    """Every connection of this process on `db` except the test's own, whatever name it carries."""
    return sum(1 for entry in ours(client, db) if entry.get("name") != TEST_CLIENT)


@pytest.fixture
def test_client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL, client_name=TEST_CLIENT)
    yield client
    client.close()


async def test_five_hundred_answers_are_relayed_at_once_through_few_connections(
    test_client: redis.Redis,
) -> None:
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    pacer = ChannelPacer(0.01)
    chats = {f"load{i}": ChatTranscript(f"C{i}") for i in range(500)}

    async def relay(request_id: str, chat: ChatTranscript) -> RelayOutcome:
        editor = StreamingEditor(chat, pacer)
        await editor.start(messages.THINKING)
        return await relay_reply(
            queue=queue, request_id=request_id, editor=editor, model="default", worker_wait_seconds=60
        )

    relays = [asyncio.create_task(relay(request_id, chat)) for request_id, chat in chats.items()]
    for request_id in chats:
        publisher.publish(request_id, StartEvent(), DeltaEvent(text=f"half of {request_id}"))
    # Every answer is half shown: all 500 relays are following their streams right now.
    await wait_until(
        lambda: all(chat.messages.get("1", "").startswith("half") for chat in chats.values()),
        "every relay to show its first half",
    )
    connections_while_relaying = connections_on_db(test_client, TEST_DB)
    named_connections = front_end_connections(test_client)
    for request_id in chats:
        publisher.publish(request_id, done(f"answer of {request_id}"))
    outcomes = await asyncio.wait_for(asyncio.gather(*relays), timeout=120)
    await queue.close()

    assert [outcome.status for outcome in outcomes] == ["done"] * 500
    assert [chat.messages for chat in chats.values()] == [{"1": f"answer of {r}"} for r in chats]
    assert connections_while_relaying <= 16
    assert 1 <= named_connections <= connections_while_relaying  # CLIENT LIST names them for operators


async def test_a_burst_of_commands_waits_for_a_free_connection_instead_of_failing(
    test_client: redis.Redis,
) -> None:
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    await asyncio.gather(*(queue.cancel(f"burst{i}") for i in range(300)))
    assert connections_on_db(test_client, TEST_DB) <= 16
    assert len(list(test_client.scan_iter(match=keys.cancel_flag("burst*")))) == 300
    await queue.close()


async def test_reply_whose_job_and_stream_vanished_ends_with_one_clear_error(
    test_client: redis.Redis,
) -> None:
    """Redis restarted without persistence (here: the database flushed) while an answer was queued."""
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    request = question("vanishing")
    await queue.enqueue(request, model="default")
    chat = ChatTranscript()
    editor = StreamingEditor(chat, ChannelPacer(0.01))
    await editor.start(messages.THINKING)
    relay = asyncio.create_task(
        relay_reply(
            queue=queue, request_id="vanishing", editor=editor, model="default", worker_wait_seconds=600
        )
    )
    await asyncio.sleep(0.5)
    test_client.flushdb()
    outcome = await asyncio.wait_for(relay, timeout=30)
    await queue.close()

    assert outcome.status == "lost"
    assert list(chat.messages.values()) == [messages.ANSWER_LOST]


async def test_answer_that_never_finishes_ends_at_its_deadline(test_client: redis.Redis) -> None:
    """A worker started the answer and then went silent (no worker is alive to finish it)."""
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    publisher.publish("stuck", StartEvent(), DeltaEvent(text="The beginning of"))
    chat = ChatTranscript()
    editor = StreamingEditor(chat, ChannelPacer(0.01))
    await editor.start(messages.THINKING)
    outcome = await asyncio.wait_for(
        relay_reply(
            queue=queue,
            request_id="stuck",
            editor=editor,
            model="default",
            worker_wait_seconds=600,
            deadline_seconds=2,
        ),
        timeout=30,
    )
    await queue.close()

    assert outcome.status == "timeout"
    assert list(chat.messages.values()) == [messages.ANSWER_TIMED_OUT]
    assert test_client.exists(keys.cancel_flag("stuck"))  # the worker is told to stop, should it wake


async def test_relay_whose_lease_is_lost_stops_without_touching_the_chat(test_client: redis.Redis) -> None:
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    chat = ChatTranscript()
    editor = StreamingEditor(chat, ChannelPacer(0.01))
    await editor.start(messages.THINKING)
    held = threading.Event()
    held.set()
    relay = asyncio.create_task(
        relay_reply(
            queue=queue,
            request_id="fenced",
            editor=editor,
            model="default",
            worker_wait_seconds=600,
            still_held=held.is_set,
        )
    )
    publisher.publish("fenced", StartEvent(), DeltaEvent(text="first words"))
    await wait_until(lambda: chat.calls >= 2, "the first words shown")
    calls_before = chat.calls
    held.clear()  # another replica took the lease over (this one stalled)
    publisher.publish("fenced", DeltaEvent(text=" and more"), done("first words and more"))
    outcome = await asyncio.wait_for(relay, timeout=30)
    await queue.close()

    assert outcome.status == "lost_lease"
    assert chat.calls == calls_before


async def test_a_reply_key_of_the_wrong_type_ends_only_its_own_answer(test_client: redis.Redis) -> None:
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    test_client.set(keys.reply_stream("clobbered"), "not a stream")  # bad data where a stream should be
    outcomes: dict[str, object] = {}

    async def follow(request_id: str) -> None:
        try:
            async for _id, event in queue.events(request_id, block_ms=200):
                if isinstance(event, DoneEvent):
                    outcomes[request_id] = event.text
                    return
        except ReplyLost as lost:
            outcomes[request_id] = lost

    # More answers than lanes, so the clobbered one shares its XREAD with healthy ones.
    request_ids = ["clobbered", *(f"healthy{index}" for index in range(8))]
    followers = [asyncio.create_task(follow(request_id)) for request_id in request_ids]
    await asyncio.sleep(0.5)
    for request_id in request_ids[1:]:
        publisher.publish(request_id, done(f"answer of {request_id}"))
    await asyncio.wait_for(asyncio.gather(*followers), timeout=30)
    await queue.close()

    assert isinstance(outcomes.pop("clobbered"), ReplyLost)
    assert outcomes == {request_id: f"answer of {request_id}" for request_id in request_ids[1:]}


def test_channel_pacer_forgets_channels_whose_turn_has_passed() -> None:
    pacer = ChannelPacer(0.05)
    for index in range(10_000):
        assert pacer.try_acquire(f"C{index}")
    threading.Event().wait(0.1)  # every turn above has passed
    assert pacer.try_acquire("C-new")
    assert pacer.channels == 1


async def test_reader_rides_out_a_redis_restart_and_resumes_each_stream(
    durable_redis: PrivateRedis,
) -> None:
    queue = queue_at(durable_redis.url, retention_seconds=60, deadline_seconds=30)
    writer = redis.Redis.from_url(durable_redis.url)
    publisher = ReplyPublisher(writer, retention_seconds=60)
    publisher.publish("steady", StartEvent(), DeltaEvent(text="before "))
    seen: list[str] = []

    async def follow() -> None:
        async for _id, event in queue.events("steady", block_ms=200):
            if isinstance(event, DeltaEvent):
                seen.append(event.text)
            if isinstance(event, DoneEvent):
                return

    follower = asyncio.create_task(follow())
    await wait_until(lambda: seen == ["before "], "the first delta")
    durable_redis.stop()
    await asyncio.sleep(8)  # longer than redis-py's own retries of one command
    durable_redis.start()
    publisher.publish("steady", DeltaEvent(text="after"), done("before after"))
    await asyncio.wait_for(follower, timeout=30)
    await queue.close()
    writer.close()

    assert seen == ["before ", "after"]


async def test_reader_gives_up_once_redis_stays_away_past_the_ride_out(
    durable_redis: PrivateRedis,
) -> None:
    queue = queue_at(durable_redis.url, retention_seconds=60, deadline_seconds=30, ride_out_seconds=1)

    async def follow() -> None:
        async for _id, _event in queue.events("abandoned", block_ms=200):
            pass

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    durable_redis.stop()
    with pytest.raises(QueueUnavailable):
        await asyncio.wait_for(follower, timeout=60)
    await queue.close()


@pytest.mark.parametrize("fault", ["out of memory", "read-only after a failover"])
async def test_enqueue_on_a_redis_that_refuses_writes_is_queue_unavailable(
    durable_redis: PrivateRedis, fault: str
) -> None:
    admin = redis.Redis.from_url(durable_redis.url)
    if fault == "out of memory":
        admin.config_set("maxmemory", 1)
        admin.config_set("maxmemory-policy", "noeviction")
    else:
        admin.replicaof("127.0.0.1", free_port())  # now a replica (of nothing): it refuses writes
    queue = queue_at(durable_redis.url, retention_seconds=60, deadline_seconds=30)
    with pytest.raises(QueueUnavailable):
        await queue.enqueue(question("no-room"), model="default")
    with pytest.raises(QueueUnavailable):
        await queue.cancel("no-room")
    await queue.close()
    admin.close()


async def test_job_that_finished_between_read_and_check_is_answered_not_reported_lost(
    test_client: redis.Redis,
) -> None:
    """The worker wrote `done` and RQ marked the job finished after the reader's last XREAD: the job check
    drains the `done` and ends quietly, with no "reply lost" warning and no error after the answer."""
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    streams = ReplyStreams(connection, job_check_seconds=3600)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    publisher.publish("raced", StartEvent())
    publisher.publish("raced", done("the whole answer"))
    test_client.hset(Job.key_for("raced"), "status", "finished")
    follower = Follower(request_id="raced", last_id="0-0", watch_job=True)
    with capture_logs() as logs:
        await streams._check_jobs([follower])
    await connection.aclose()

    delivered = [await follower.next(timeout=1) for _ in range(2)]
    assert [type(item[1]) for item in delivered if item] == [StartEvent, DoneEvent]
    assert await follower.next(timeout=0.2) is None  # nothing after the answer: no ReplyLost
    assert follower.ended
    assert not [entry for entry in logs if entry["event"] == "reply lost"]


async def test_a_lease_that_lapsed_while_its_process_was_busy_is_kept_unless_another_took_it(
    test_client: redis.Redis,
) -> None:
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    book = RelayBook(connection, platform="slack", retention_seconds=60)
    twin = RelayBook(connection, platform="slack", retention_seconds=60)
    for request_id in ("lapsed", "taken"):
        assert await book.take((f"ev-{request_id}",), request_id, {"model": "default", "sink": {}})
        test_client.delete(keys.relay_lease("slack", request_id))  # renewed too late: it lapsed
    assert await twin.claim("taken") is not None  # another process took this one over meanwhile

    lost = await book.renew()
    await connection.aclose()

    assert lost == ["taken"]
    assert book.holds("lapsed") and not book.holds("taken")


async def test_an_answer_that_finished_after_the_orphan_scan_listed_it_is_not_relayed_again(
    test_client: redis.Redis,
) -> None:
    """Found by the soak (front-end-kill at 1,000 questions): the housekeeping pass listed the records, an
    answer finished and released its lease, then the pass claimed that free lease and relayed the finished
    answer a second time, over the first."""
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    relaying = RelayBook(connection, platform="slack", retention_seconds=60)
    restarted = RelayBook(connection, platform="slack", retention_seconds=60)
    assert await relaying.take(("ev-done",), "done-meanwhile", {"model": "default", "sink": {"ts": "1"}})
    assert await relaying.take(("ev-orphan",), "orphaned", {"model": "default", "sink": {"ts": "2"}})
    test_client.delete(keys.relay_lease("slack", "orphaned"))  # its process died: the lease lapsed
    listed = await InflightRequests(connection, platform="slack", retention_seconds=60).all()

    await relaying.finish("done-meanwhile")
    claims = {request_id: await restarted.claim(request_id) for request_id in listed}
    await connection.aclose()

    assert sorted(listed) == ["done-meanwhile", "orphaned"]
    assert claims == {"done-meanwhile": None, "orphaned": {"model": "default", "sink": {"ts": "2"}}}
    assert restarted.holds("orphaned") and not restarted.holds("done-meanwhile")
    assert not test_client.exists(keys.relay_lease("slack", "done-meanwhile"))


async def test_an_answer_a_worker_takes_just_at_the_deadline_is_relayed_not_timed_out(
    test_client: redis.Redis,
) -> None:
    """A long queue: the job waited its whole deadline and a worker took it just then (its start not out
    yet). The relay waits on, as it does for a queued job, and shows the answer."""
    queue = queue_at(TEST_REDIS_URL, retention_seconds=60, deadline_seconds=30)
    publisher = ReplyPublisher(test_client, retention_seconds=60)
    test_client.hset(Job.key_for("late"), "status", "started")
    test_client.expire(Job.key_for("late"), 60)
    test_client.sadd(keys.WORKERS_SET, "w1")  # the worker that took it is alive
    test_client.hset(keys.worker_heartbeat("w1"), mapping={"model": "default", "live_slots": "1"})
    chat = ChatTranscript()
    editor = StreamingEditor(chat, ChannelPacer(0.01))
    await editor.start(messages.THINKING)
    relay = asyncio.create_task(
        relay_reply(
            queue=queue, request_id="late", editor=editor, model="default", worker_wait_seconds=600,
            deadline_seconds=1,
        )
    )  # fmt: skip
    await asyncio.sleep(1.5)  # past the deadline, nothing read yet
    publisher.publish("late", StartEvent(), DeltaEvent(text="on time"), done("on time"))
    outcome = await asyncio.wait_for(relay, timeout=30)
    await queue.close()

    assert outcome.status == "done"
    assert list(chat.messages.values()) == ["on time"]
