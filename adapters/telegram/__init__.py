"""Telegram, via aiogram 3: `from adapters.telegram import TelegramAdapter`."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
