"""What every litellm call shares: the provider endpoint, key and timeout from the config."""

from __future__ import annotations

import os
from typing import Any

from core.config import CoreConfig


def import_litellm() -> Any:
    """litellm, imported once and told to keep quiet: by default it prints a "Give Feedback /
    Get Help" banner and debug hints to stdout on every failed call (stdout is for replies).
    Its bundled price list is used unless the operator says otherwise: by default litellm
    fetches one from the internet while it is imported (set here, at first use, not at import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    return litellm


def provider_kwargs(config: CoreConfig) -> dict[str, Any]:
    """`api_base`/`api_key` (MNEMO_LLM_API_BASE/KEY, when set) and the timeout."""
    kwargs: dict[str, Any] = {"timeout": config.llm_timeout_s}
    if config.llm_api_base:
        kwargs["api_base"] = config.llm_api_base
    if config.llm_api_key:
        kwargs["api_key"] = config.llm_api_key
    return kwargs
