"""Every sentence a person in the chat can read, in one place, written for them (not for us)."""

EMPTY_MENTION = "Hi! Ask me something after the mention, e.g. `@brandbot how do I reset my password?`"
QUEUE_UNREACHABLE = "Sorry, I can't reach my workers right now. Please try again in a minute."
NO_WORKER = "Sorry, no one is running the model for this right now. I've let it wait; an admin can check."
GENERATION_FAILED = "Sorry, something went wrong while I was writing that answer. Please try again."
BAD_REQUEST = "Sorry, I couldn't read that request. Please rephrase and try again."
PERSONA_UNAVAILABLE = (
    "Sorry, I'm not configured to answer here right now. An admin can check the prompt files."
)
CUT_SHORT = "_(I ran out of time and stopped early.)_"
STOPPED = "_(Stopped.)_"
THINKING = "Thinking…"
RESTARTING = "Thinking… (starting over after a hiccup)"
QUESTION_TRIMMED = "Your message was too long for me, so I only read its beginning."
CONTEXT_TRIMMED = "This conversation is long, so I only read its most recent part."
TOO_LONG = (
    "That question is too long for me ({length} characters, the limit is {limit}). Could you shorten it?"
)
RATE_LIMITED = "You're asking faster than I can keep up. Please wait {seconds} seconds and try again."
NOT_ALLOWED = "Sorry, I'm not allowed to answer here."


def queue_position(ahead: int) -> str:
    if ahead <= 0:
        return THINKING
    noun = "request" if ahead == 1 else "requests"
    return f"Thinking… ({ahead} {noun} ahead of you)"
