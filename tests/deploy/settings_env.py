"""Build `ConsumeSettings` from an environment the way a container gets it: nothing but those variables."""

from __future__ import annotations

import os

import pytest

from core.settings import leaves
from streamer.settings import ConsumeSettings

OTHER_VARIABLES = {"OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
"""Variables a consumer container gets that are not WEBR_* settings (the key, and pyarrow's S3 credentials)."""


def unknown_variables(env: dict[str, str]) -> set[str]:
    """WEBR_* names that match no setting (pydantic-settings would silently ignore them) and unexpected others."""
    names = {name for leaf in leaves(ConsumeSettings) for name in leaf.env}
    return {key for key in env if key not in names and key not in OTHER_VARIABLES}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ConsumeSettings:
    for key in list(os.environ):
        if key.startswith(("WEBR_", "OPENAI_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return ConsumeSettings.load({})
