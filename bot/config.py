"""Configuration from the environment (and `.env`), validated once at start-up.

Every variable is DESIGN.md's contract. A bad value stops start-up with one line naming the
variable (see `load_settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A configuration problem, phrased for a person: names the variable."""


def default_data_dir() -> Path:
    """Per user, wherever `mnemo` is started from: `$XDG_DATA_HOME/mnemo` (~/.local/share/mnemo)."""
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "mnemo"


def reveal(value: SecretStr | None) -> str | None:
    """A secret's text, where it is handed to the SDK or API that needs it (SecretStr keeps
    tokens and keys out of every repr, log line and traceback until then)."""
    return value.get_secret_value() if value is not None else None


def _url(value: str | None, variable: str) -> str | None:
    if value is None or value == "":
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(default_factory=lambda: default_data_dir(), validation_alias="MNEMO_DATA_DIR")
    mongodb_uri: str | None = Field(None, validation_alias="MONGODB_URI")
    mongodb_db: str = Field("mnemo", validation_alias="MNEMO_MONGODB_DB")
    chroma_url: str | None = Field(None, validation_alias="CHROMA_URL")

    model: str | None = Field(None, validation_alias="MNEMO_MODEL")
    reasoning_model: str | None = Field(None, validation_alias="MNEMO_REASONING_MODEL")
    learning_model: str | None = Field(None, validation_alias="MNEMO_LEARNING_MODEL")
    llm_api_base: str | None = Field(None, validation_alias="MNEMO_LLM_API_BASE")
    llm_api_key: SecretStr | None = Field(None, validation_alias="MNEMO_LLM_API_KEY")
    llm_timeout_s: float = Field(60.0, gt=0, validation_alias="MNEMO_LLM_TIMEOUT")
    embedding_model: str = Field("local", validation_alias="MNEMO_EMBEDDING_MODEL")
    stt_model: str = Field("local", validation_alias="MNEMO_STT_MODEL")
    vision_model: str | None = Field(None, validation_alias="MNEMO_VISION_MODEL")
    max_file_mb: float = Field(20.0, gt=0, validation_alias="MNEMO_MAX_FILE_MB")
    max_audio_minutes: float = Field(10.0, gt=0, validation_alias="MNEMO_MAX_AUDIO_MINUTES")

    http_host: str = Field("0.0.0.0", validation_alias="MNEMO_HTTP_HOST")
    http_port: int = Field(8080, ge=0, le=65535, validation_alias="MNEMO_HTTP_PORT")
    public_url: str | None = Field(None, validation_alias="MNEMO_PUBLIC_URL")
    lease_seconds: float = Field(120.0, ge=1, validation_alias="MNEMO_LEASE_SECONDS")
    drain_seconds: float = Field(20.0, ge=0, validation_alias="MNEMO_DRAIN_SECONDS")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", validation_alias="MNEMO_LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", validation_alias="MNEMO_LOG_FORMAT")

    telegram_bot_token: SecretStr | None = Field(None, validation_alias="TELEGRAM_BOT_TOKEN")
    telegram_api_base: str | None = Field(None, validation_alias="TELEGRAM_API_BASE")
    telegram_webhook_url: str | None = Field(None, validation_alias="TELEGRAM_WEBHOOK_URL")
    telegram_webhook_secret: SecretStr | None = Field(None, validation_alias="TELEGRAM_WEBHOOK_SECRET")

    discord_bot_token: SecretStr | None = Field(None, validation_alias="DISCORD_BOT_TOKEN")
    discord_api_base: str = Field("https://discord.com/api/v10", validation_alias="DISCORD_API_BASE")

    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_base: str = Field("https://slack.com/api/", validation_alias="SLACK_API_BASE")

    @field_validator(
        "mongodb_uri", "chroma_url", "model", "reasoning_model", "learning_model", "llm_api_base", "llm_api_key",
        "vision_model", "telegram_bot_token", "telegram_api_base", "telegram_webhook_url",
        "telegram_webhook_secret", "discord_bot_token", "slack_bot_token", "slack_app_token",
        "slack_signing_secret", "public_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("chroma_url", "llm_api_base", "telegram_api_base", "telegram_webhook_url",
                     "discord_api_base", "slack_api_base", "public_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        return _url(value, "")

    @field_validator("mongodb_uri")
    @classmethod
    def _is_mongo_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("embedding_model", "stt_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be 'local' or a litellm model name")
        return value.strip()

    @field_validator("stt_model")
    @classmethod
    def _stt_model_dir_has_model(cls, value: str) -> str:
        # A path selects a local CTranslate2 Whisper model (e.g. a multilingual one): check it now,
        # not when the first voice note arrives.
        from core.media.speech import is_model_dir_setting

        if is_model_dir_setting(value) and not (Path(value).expanduser() / "model.bin").is_file():
            raise ValueError(f"no CTranslate2 Whisper model (model.bin) in {value}")
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret_charset(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and -.
        raw = reveal(value)
        if raw is not None and (len(raw) > 256 or not all(c.isalnum() or c in "_-" for c in raw)):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @property
    def effective_reasoning_model(self) -> str | None:
        return self.reasoning_model or self.model

    @property
    def effective_learning_model(self) -> str | None:
        return self.learning_model or self.model

    @property
    def platforms(self) -> list[str]:
        enabled = []
        if self.telegram_bot_token:
            enabled.append("telegram")
        if self.discord_bot_token:
            enabled.append("discord")
        if self.slack_bot_token:
            enabled.append("slack")
        return enabled

    def check_platforms(self) -> None:
        """Cross-variable checks, phrased per variable."""
        if self.telegram_webhook_url and not self.telegram_webhook_secret:
            raise ConfigError(
                "TELEGRAM_WEBHOOK_SECRET: must be set when TELEGRAM_WEBHOOK_URL is set "
                "(Telegram signs webhook calls with it)"
            )
        if self.slack_bot_token and not (self.slack_app_token or self.slack_signing_secret):
            raise ConfigError(
                "SLACK_APP_TOKEN or SLACK_SIGNING_SECRET: one must be set with SLACK_BOT_TOKEN "
                "(Socket Mode or HTTP events)"
            )
        if (self.slack_app_token or self.slack_signing_secret) and not self.slack_bot_token:
            raise ConfigError("SLACK_BOT_TOKEN: must be set to use Slack")


def load_settings(**overrides: object) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        variable = _variable_for(field)
        secret = any(word in variable for word in ("TOKEN", "SECRET", "KEY", "URI"))
        got = "" if secret else f" (got {error.get('input')!r})"
        raise ConfigError(f"{variable}: {error['msg']}{got}") from None
    settings.check_platforms()
    return settings


def _variable_for(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return field
