"""Every setting of every tier, read once at the entry point and passed down.

Names are the public interface (`BRANDBOT_<FIELD>`); each field's description feeds the README table.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from brandbot.errors import SettingsError


class EngineName(StrEnum):
    TRANSFORMERS = "transformers"
    EXLLAMAV2 = "exllamav2"


class SlackMode(StrEnum):
    SOCKET = "socket"
    HTTP = "http"


class Settings(BaseSettings):
    """brandbot's configuration: environment variables prefixed `BRANDBOT_`, or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="BRANDBOT_", env_file=".env", extra="ignore", validate_default=True
    )

    # -- shared --------------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding the job queues and the reply streams."
    )
    prompts_dir: Path = Field(
        Path("prompts"), description="Folder of admin prompt files (personas, routing)."
    )
    model_name: str = Field(
        "default",
        description="Model this worker serves; its queue is `brandbot:model:<name>`. Personas name it.",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    retention_seconds: int = Field(
        86_400, ge=60, description="How long Redis keeps anything holding conversation text (seconds)."
    )
    log_message_text: bool = Field(
        False, description="Log users' questions and answers. Off by default: logs carry ids and counts only."
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    company_name: str = Field("Acme", description="Company name offered to prompt templates.")

    # -- worker --------------------------------------------------------------------------------------
    model_dir: Path | None = Field(None, description="Hugging Face-format model folder the worker loads.")
    engine: EngineName = Field(
        EngineName.TRANSFORMERS, description="`transformers` (CPU) or `exllamav2` (GPU)."
    )
    worker_concurrency: int = Field(4, ge=1, le=256, description="Requests one worker generates at once.")
    generation_deadline_seconds: float = Field(
        120.0, gt=0, description="A reply stops (marked cut short) once generating takes this long."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port."
    )

    # -- front-ends ----------------------------------------------------------------------------------
    max_question_chars: int = Field(4000, ge=1, description="Longer questions are refused with a notice.")
    worker_wait_seconds: float = Field(
        20.0, gt=0, description="If no worker picks a request up within this time, the user is told."
    )
    edit_interval_seconds: float = Field(
        1.0, gt=0, description="Minimum time between two edits of a streamed reply in one channel."
    )

    # -- Slack ---------------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(None, description="Slack bot token (`xoxb-…`).")
    slack_app_token: SecretStr | None = Field(None, description="Slack app-level token for Socket Mode.")
    slack_signing_secret: SecretStr | None = Field(None, description="Slack signing secret (HTTP mode).")
    slack_api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://slack.com/api/"),
        description="Base of every Slack Web API call (GovSlack, a proxy or a test emulator).",
    )
    slack_mode: SlackMode = Field(SlackMode.SOCKET, description="`socket` (no public URL) or `http`.")
    slack_http_port: int = Field(3000, ge=1, le=65535, description="Port of the HTTP Events API endpoint.")

    # -- Discord -------------------------------------------------------------------------------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token.")
    discord_api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://discord.com/api/v10"), description="Base of Discord's REST API."
    )
    discord_gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="Discord gateway websocket URL."
    )

    def require(self, *names: str) -> None:
        """Stop with a clear message if a setting this command needs is unset."""
        missing = [f"BRANDBOT_{name.upper()}" for name in names if getattr(self, name) is None]
        if missing:
            raise SettingsError(f"{', '.join(missing)} must be set for this command")


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one readable line each."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            field = ".".join(str(part) for part in detail["loc"])
            problems.append(f"BRANDBOT_{field.upper()}: {detail['msg']}")
        raise SettingsError("; ".join(problems)) from None
