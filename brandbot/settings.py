"""Every setting of every tier, read once at the entry point and passed down.

Names are the public interface (`BRANDBOT_<FIELD>`); each field's description feeds the README table.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from brandbot.errors import SettingsError


class EngineName(StrEnum):
    AUTO = "auto"
    TRANSFORMERS = "transformers"
    EXLLAMAV2 = "exllamav2"
    EXLLAMAV3 = "exllamav3"


class CacheType(StrEnum):
    FP16 = "fp16"
    Q8 = "q8"
    Q6 = "q6"
    Q4 = "q4"


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


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
        EngineName.AUTO,
        description="`auto` (chosen from the model folder: EXL3 → `exllamav3`, EXL2 → `exllamav2`, plain"
        " Hugging Face → `exllamav3` on a CUDA GPU, `transformers` on CPU), or one of those by name.",
    )
    worker_concurrency: int = Field(4, ge=1, le=256, description="Requests one worker generates at once.")
    generation_deadline_seconds: float = Field(
        120.0, gt=0, description="A reply stops (marked cut short) once generating takes this long."
    )
    engine_stall_seconds: float = Field(
        60.0,
        gt=0,
        description="A worker whose engine makes no progress this long while answering stops (its questions "
        "are retried on another worker, its supervisor restarts it) instead of freezing.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`, `/readyz`) on this "
        "port, in each process (worker, front-ends); `brandbot probe` asks it.",
    )
    drain_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, running answers get this long to finish; the rest are requeued."
    )
    job_heartbeat_ttl_seconds: int = Field(
        20, ge=3, description="A running job whose worker stops beating this long is retried elsewhere."
    )
    recovery_interval_seconds: float = Field(
        15.0, gt=0, description="How often workers look for (and retry) jobs abandoned by a dead worker."
    )
    cache_type: CacheType = Field(CacheType.FP16, description="GPU engines' KV cache: fp16, q8, q6 or q4.")
    cache_tokens: int | None = Field(
        None, ge=256, description="GPU engines' total cache length in tokens, shared by all requests."
    )
    gpu_split: str | None = Field(
        None,
        pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$",
        description="GPU engines' GB per GPU, e.g. `20,24`; unset = fill GPUs automatically.",
    )
    lora_dir: Path | None = Field(
        None,
        description="LoRA adapter folder this worker answers every question with (ExLlamaV2 and CPU engines;"
        " for ExLlamaV3 serve a merged folder). Personas whose `lora:` is this adapter reach it through their"
        " `model:` queue.",
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
    slack_socket_connections: int = Field(
        1,
        ge=1,
        le=10,
        description="Socket Mode connections this process keeps open (Slack allows 10 per app and spreads"
        " events over them): a burst of mentions is read and acknowledged over several at once.",
    )
    slack_http_port: int = Field(3000, ge=1, le=65535, description="Port of the HTTP Events API endpoint.")
    slack_http_host: str = Field(
        "0.0.0.0", description="Address the HTTP Events API endpoint listens on (HTTP mode)."
    )
    slack_http_path: str = Field(
        "/slack/events",
        pattern=r"^/[A-Za-z0-9/_.-]*$",
        description="Path of the HTTP Events API endpoint: the Request URL's path in the Slack app config.",
    )
    slack_streaming: bool = Field(
        True,
        description="Stream answers with Slack's chat.startStream/appendStream/stopStream where the "
        "workspace has them (otherwise, or when off, answers grow through chat.update).",
    )
    slack_native_markdown: bool = Field(
        True,
        description="Send the model's Markdown as is (markdown_text, markdown blocks). Off: convert it to "
        "Slack mrkdwn, for workspaces or proxies without markdown_text.",
    )

    # -- Discord -------------------------------------------------------------------------------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token.")
    discord_api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://discord.com/api/v10"), description="Base of Discord's REST API."
    )
    discord_gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="Discord gateway websocket URL."
    )
    discord_command_guilds: list[int] = Field(
        default_factory=list,
        description="Register slash commands in these servers only, as a JSON list (`[123, 456]`); "
        "empty: register them globally.",
    )
    discord_sync_commands: bool = Field(
        True, description="Register (sync) the slash commands with Discord at start."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the metrics and health checks listen on; `0.0.0.0` opens them to the network.",
    )

    # -- Redis security and high availability ----------------------------------------------------
    # Users and passwords travel in BRANDBOT_REDIS_URL (`redis://worker:<password>@host:6379/0`); a
    # `rediss://` URL turns TLS on, and these settings give it its certificates.
    redis_tls_ca_file: Path | None = Field(
        None,
        description="CA certificate (PEM) that signed the Redis server's certificate (`rediss://` URLs); "
        "unset: the system's trusted CAs.",
    )
    redis_tls_cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM) for Redis servers that check clients (`tls-auth-clients`).",
    )
    redis_tls_key_file: Path | None = Field(
        None, description="Private key (PEM) of `BRANDBOT_REDIS_TLS_CERT_FILE`."
    )
    redis_tls_check_hostname: bool = Field(
        True, description="Check that the Redis server's certificate names the host connected to."
    )
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description='Redis Sentinel addresses as a JSON list (`["sentinel-1:26379", "sentinel-2:26379"]`)'
        "; set: the master is found through them, and BRANDBOT_REDIS_URL gives only user, password, "
        "database and scheme.",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="Name of the master the sentinels watch (`sentinel monitor <name> …`)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the sentinels themselves (their `requirepass`), if they have one."
    )
    redis_failover_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="With Sentinel: how long a reconnection waits for the sentinels to name a reachable "
        "master (set it above their `down-after-milliseconds` plus a few seconds). A command whose "
        "connection broke is tried on up to three connections, then fails as usual.",
    )

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _tls_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port")
        return addresses

    @model_validator(mode="after")
    def _tls_settings_need_a_tls_url(self) -> Settings:
        tls_files = [
            f"BRANDBOT_{name.upper()}"
            for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
            if getattr(self, name) is not None
        ]
        if tls_files and not self.redis_url.startswith("rediss://"):
            # Otherwise an operator who set up certificates would believe the link is encrypted.
            raise ValueError(f"{', '.join(tls_files)} set, but BRANDBOT_REDIS_URL is not rediss://")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("BRANDBOT_REDIS_TLS_CERT_FILE and BRANDBOT_REDIS_TLS_KEY_FILE go together")
        return self

    # -- logs ----------------------------------------------------------------------------------------
    log_format: LogFormat = Field(
        LogFormat.CONSOLE,
        description="`console` (one readable line per event) or `json` (one JSON object per line, for log "
        "shippers).",
    )

    # -- feedback ------------------------------------------------------------------------------------
    feedback_enabled: bool = Field(
        True,
        description="Show 👍/👎 under answers in Slack and Discord, and have the worker keep each such "
        "answered conversation for the retention period so it can be rated and exported. Off: no buttons, "
        "nothing kept.",
    )

    # -- usage (`brandbot usage`) --------------------------------------------------------------------
    usage_retention_days: int = Field(
        90,
        ge=1,
        le=3650,
        description="How long Redis keeps the usage counters (days; counts and ids, never text); "
        "independent of BRANDBOT_RETENTION_SECONDS.",
    )
    usage_api_input_price_per_million: float = Field(
        1.0,
        ge=0,
        description="A metered API's price per million input (prompt) tokens, in your currency, to compare "
        "with: `brandbot usage` shows what the same tokens would have cost there. An illustrative round "
        "default, not any provider's price: set yours.",
    )
    usage_api_output_price_per_million: float = Field(
        4.0,
        ge=0,
        description="A metered API's price per million output (completion) tokens, in your currency. An "
        "illustrative round default, not any provider's price: set yours.",
    )
    usage_gpu_hour_price: float = Field(
        2.0,
        ge=0,
        description="What one GPU-hour of your own hardware costs (depreciation, power, hosting, or a "
        "rental price), in your currency: `brandbot usage` turns it into a cost per 1,000 answers. An "
        "illustrative round default: set yours.",
    )

    def require(self, *names: str) -> None:
        """Stop with a clear message if a setting this command needs is unset."""
        missing = [f"BRANDBOT_{name.upper()}" for name in names if getattr(self, name) is None]
        if missing:
            raise SettingsError(f"{', '.join(missing)} must be set for this command")


PLATFORM_FIELD_PREFIXES = ("slack_", "discord_")
"""Front-end settings: platform tokens and secrets among them."""


class WorkerSettings(Settings):
    """The GPU tier's settings: platform settings are never read, from the environment or from `.env`,
    so a worker started beside the front-ends (one `.env` for all) holds no platform credential."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        def without_platform(source: PydanticBaseSettingsSource) -> PydanticBaseSettingsSource:
            def read() -> dict[str, object]:
                return {
                    name: value
                    for name, value in source().items()
                    if not name.lower().startswith(PLATFORM_FIELD_PREFIXES)
                }

            read.__name__ = type(source).__name__
            return read  # type: ignore[return-value] # pydantic-settings calls any source that returns a dict

        return (
            init_settings,
            without_platform(env_settings),
            without_platform(dotenv_settings),
            file_secret_settings,
        )


def load_settings(settings_class: type[Settings] = Settings, **overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one readable line each."""
    try:
        return settings_class(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            field = ".".join(str(part) for part in detail["loc"])
            # A check across settings (no location) names its settings in its own message.
            message = detail["msg"].removeprefix("Value error, ")
            problems.append(f"BRANDBOT_{field.upper()}: {message}" if field else message)
        raise SettingsError("; ".join(problems)) from None


def settings_table() -> str:
    """The README's settings table, generated from the field descriptions (a test keeps them in step)."""
    rows = ["| Setting | Default | What it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        default = getattr(default, "value", default)
        shown = "—" if default is None or default == [] else f"`{default}`"
        rows.append(f"| `BRANDBOT_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
