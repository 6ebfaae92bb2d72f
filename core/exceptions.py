"""Exception root for the whole project; each package narrows it in its own exceptions module."""


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(PipelineError):
    """The config file is missing or cannot be read as TOML: entry points report it like a pydantic
    `ValidationError` (exit 2), not as a crash."""


class InvalidRecord(PipelineError):
    """An input record cannot become a document; `reason` is a short stable code for dashboards."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
