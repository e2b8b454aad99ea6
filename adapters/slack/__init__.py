"""Slack: slack-bolt AsyncApp (Socket Mode or HTTP events) on the shared core."""

from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]
