"""Redis key names shared by the tiers, in one place so nothing else spells them."""

from typing import Any

KEY_PREFIX = "brandbot"


def as_text(value: Any) -> str:
    """Redis replies are bytes; names and ids are text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def model_queue(model_name: str) -> str:
    """The RQ queue that workers serving `model_name` consume."""
    return f"{KEY_PREFIX}:model:{model_name}"


def reply_stream(request_id: str) -> str:
    """Stream of reply events for one request (XADD by the worker, XREAD by the front-end)."""
    return f"{KEY_PREFIX}:reply:{request_id}"


def cancel_flag(request_id: str) -> str:
    """Set by a front-end to stop a generation."""
    return f"{KEY_PREFIX}:cancel:{request_id}"


def seen_event(platform: str, event_id: str) -> str:
    """De-duplication marker for a platform event (SET NX EX)."""
    return f"{KEY_PREFIX}:seen:{platform}:{event_id}"


def inflight_record(platform: str, request_id: str) -> str:
    """One answer a front-end is relaying: where it is shown (JSON, ids only); expires with the retention."""
    return f"{KEY_PREFIX}:inflight:{platform}:{request_id}"


def inflight_index(platform: str) -> str:
    """Sorted set of the request ids with an in-flight record, scored by when the record expires."""
    return f"{KEY_PREFIX}:inflight:{platform}"


def relay_lease(platform: str, request_id: str) -> str:
    """Held by the front-end process relaying this answer (SET NX EX, renewed while it relays)."""
    return f"{KEY_PREFIX}:relay-lease:{platform}:{request_id}"


def rate_limit_notice(platform: str, user_id: str) -> str:
    """Set while a rate-limited user has been told so: one notice per wait, however often they ask."""
    return f"{KEY_PREFIX}:ratelimit-notice:{platform}:{user_id}"


def joined_conversation(platform: str, conversation_id: str) -> str:
    """Set while the bot answers in a thread: replies there reach it without a mention."""
    return f"{KEY_PREFIX}:{platform}:joined:{conversation_id}"


def slack_assistant_thread(channel: str, thread_ts: str) -> str:
    """Set for a Slack AI-assistant thread (its status line and suggested prompts apply there)."""
    return f"{KEY_PREFIX}:slack:assistant-thread:{channel}:{thread_ts}"


def worker_heartbeat(worker_name: str) -> str:
    return f"{KEY_PREFIX}:worker:{worker_name}"


WORKERS_SET = f"{KEY_PREFIX}:workers"


def recovery_lock(queue_name: str) -> str:
    """Held by the worker retrying a queue's abandoned jobs; short-lived: a dead holder soon frees it."""
    return f"{KEY_PREFIX}:recovery-lock:{queue_name}"


def feedback(request_id: str) -> str:
    """Stored conversation and rating of one answered request (for the fine-tuning export)."""
    return f"{KEY_PREFIX}:feedback:{request_id}"


def usage_index(tier: str, day: str) -> str:
    """Set of the usage groups one tier recorded on `day` (UTC, YYYY-MM-DD): counters only, no text."""
    return f"{KEY_PREFIX}:usage:{tier}:{day}"


def usage_counters(tier: str, day: str, group: tuple[str, ...]) -> str:
    """Hash of one tier's counters for one day and group (persona, platform, channel, model ids)."""
    return f"{KEY_PREFIX}:usage:{tier}:{day}:{':'.join(group)}"


def usage_uptime(day: str) -> str:
    """Hash of the seconds workers were up on `day`, per model (for the wall-clock cost)."""
    return f"{KEY_PREFIX}:usage:engine:{day}:uptime"
