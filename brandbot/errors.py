"""One error hierarchy for every tier; messages here are for admins, users see `brandbot.messages`."""


class BrandbotError(Exception):
    """Base of every error brandbot raises on purpose."""


class SettingsError(BrandbotError):
    """A setting is missing or invalid; the process stops at start with this one line."""


class PromptFileError(BrandbotError):
    """Prompt files are invalid; `problems` holds one `file:line: field: message` string each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class EngineLoadError(BrandbotError):
    """The model or engine cannot start (missing folder, no CUDA, cache does not fit, …)."""


class TemplateError(BrandbotError):
    """A chat template or prompt template failed to render."""


class QueueUnavailable(BrandbotError):
    """Redis cannot be reached."""


class BadRequestPayload(BrandbotError):
    """A job payload does not match the contract."""


class EngineDied(BrandbotError):
    """The engine's generation thread ended unexpectedly: nothing more can be generated in this process."""


class WorkerFailed(BrandbotError):
    """The worker cannot go on serving (its engine died, its job slots keep dying); it exits non-zero."""


class RepliesUnpublishable(BrandbotError):
    """Redis stayed unavailable longer than a reply may wait: the worker stops generating that reply."""


class PlatformUnreachable(BrandbotError):
    """Slack's or Discord's API did not answer at start-up (one line for the admin, not a traceback)."""
