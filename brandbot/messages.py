"""Every sentence a person in the chat can read, in one place, written for them (not for us)."""

EMPTY_MENTION = "Hi! Ask me something after the mention, e.g. `@brandbot how do I reset my password?`"
QUEUE_UNREACHABLE = "Sorry, I can't reach my workers right now. Please try again in a minute."
NO_WORKER = "Sorry, no one is running the model for this right now. I've let it wait; an admin can check."
GENERATION_FAILED = "Sorry, something went wrong while I was writing that answer. Please try again."
BAD_REQUEST = "Sorry, I couldn't read that request. Please rephrase and try again."
PERSONA_UNAVAILABLE = (
    "Sorry, I'm not configured to answer here right now. An admin can check the prompt files."
)
FINE_TUNE_UNAVAILABLE = (
    "Sorry, the voice I'm meant to answer in here isn't available right now. An admin has been told."
)
CUT_SHORT = "_(I ran out of time and stopped early.)_"
STOPPED = "_(Stopped.)_"
THINKING = "Thinking…"
RESTARTING = "Thinking… (starting over after a hiccup)"
QUESTION_TRIMMED = "Your message was too long for me, so I only read its beginning."
CONTEXT_TRIMMED = "This conversation is long, so I only read its most recent part."
CUT_BY_LENGTH = "This answer reached my length limit, so it stops here. Ask me to go on if you need more."
CONFIDENTIAL_REFUSAL = "Sorry, I can't share my instructions. Is there something else I can help with?"
TOO_LONG = (
    "That question is too long for me ({length} characters, the limit is {limit}). Could you shorten it?"
)
RATE_LIMITED = "You're asking faster than I can keep up. Please wait {seconds} seconds and try again."
NOT_ALLOWED = "Sorry, I'm not allowed to answer here."
ANSWER_LOST = "Sorry, something went wrong on my side and I couldn't finish that answer. Please ask again."
ANSWER_TIMED_OUT = "Sorry, that answer took far too long, so I stopped it. Please try again."


# What the bot says while it works or cannot answer: never part of a conversation's context.
BOT_NOTICES = frozenset(
    {
        THINKING,
        RESTARTING,
        EMPTY_MENTION,
        QUEUE_UNREACHABLE,
        NO_WORKER,
        GENERATION_FAILED,
        BAD_REQUEST,
        PERSONA_UNAVAILABLE,
        FINE_TUNE_UNAVAILABLE,
        NOT_ALLOWED,
        ANSWER_LOST,
        ANSWER_TIMED_OUT,
    }
)


def is_bot_notice(text: str) -> bool:
    """A status or error line of the bot's (the queue position too), as opposed to an answer."""
    return text in BOT_NOTICES or text.startswith(THINKING)


def queue_position(ahead: int) -> str:
    if ahead <= 0:
        return THINKING
    noun = "request" if ahead == 1 else "requests"
    return f"Thinking… ({ahead} {noun} ahead of you)"


# -- Terminal (`brandbot chat`): printed on a terminal, so notes are in parentheses, not Markdown
TERMINAL_STOPPED = "(stopped)"
TERMINAL_CUT_SHORT = "(the answer was cut short: the generation deadline was reached)"
TERMINAL_RESTARTING = "\n(the worker restarted; starting the answer over)\n"
TERMINAL_NO_WORKER = "(no worker is serving model {model!r}: start one with `brandbot worker`)"
TERMINAL_NOTE = "(note: {notice})"
TERMINAL_EMPTY = "(type a question, or /help)"


# -- Discord
DISCORD_EMPTY_ASK = "Please type a question in `prompt`."
DISCORD_ADMINS_ONLY = "Only brandbot admins can do that."
DISCORD_COMMAND_FAILED = "Sorry, that didn't work. Please try again."
DISCORD_MOVED_BELOW = "This answer took a while, so it continues in a new message below."
DISCORD_MOVED_TO_DM = "This answer took a while, so I'm finishing it in a direct message to you."
DISCORD_MOVE_FAILED = "Sorry, this answer took too long to finish here, so I stopped. Please ask again."


def discord_persona_refused(requested: str, choosable: list[str]) -> str:
    if not choosable:
        return f"You can't pick a persona here, so I didn't use {requested}. Ask again without `persona`."
    return f"You can't pick {requested} here. You can pick: {', '.join(choosable)}."


def discord_persona_here(display_name: str, name: str, reason: str, choosable: list[str]) -> str:
    text = f"**{display_name}** (`{name}`) answers here: {reason}."
    if choosable:
        text += f"\nWith `/ask persona:` you can pick: {', '.join(choosable)}."
    return text


def discord_status(models: list[tuple[str, int, int]]) -> str:
    """One line per model: (model, requests waiting, workers alive)."""
    lines = [f"`{model}`: {waiting} waiting, {workers} worker(s) alive" for model, waiting, workers in models]
    return "\n".join(lines) or "No models are configured."


def discord_reloaded(personas: int) -> str:
    return f"Prompt files reloaded: {personas} persona(s) live."


def discord_reload_rejected(problems: list[str]) -> str:
    return "The prompt files have problems, so the last good ones stay live:\n" + "\n".join(
        f"- {problem}" for problem in problems
    )


# -- 👍/👎 under answers (Slack and Discord)
FEEDBACK_GOOD_LABEL = "This answer helped"
FEEDBACK_BAD_LABEL = "This answer did not help"
FEEDBACK_THANKS = "Thanks, your rating is saved. It helps us make my answers better."
FEEDBACK_EXPIRED = "Sorry, that answer is too old to rate now."


# -- Slack
SLACK_STOP_BUTTON = "Stop"
SLACK_STOP_NOT_YOURS = "Only the person who asked (or a brandbot admin) can stop this answer."
SLACK_DIRECT_MESSAGES_OFF = "Sorry, I don't answer direct messages here. Please mention me in a channel."
SLACK_ASSISTANT_STATUS = "is thinking…"
SLACK_SUGGESTED_PROMPTS_TITLE = "Here are a few things you can ask me:"
SLACK_SUGGESTED_PROMPTS = (
    ("What can you do?", "What can you help me with?"),
    ("Explain something", "Explain, in plain words, how our product works."),
    ("Draft a message", "Help me draft a short, friendly message to a customer."),
)
"""Offered when someone opens an assistant thread: (button title, the message it sends)."""
