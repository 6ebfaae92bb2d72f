"""Exception root for the whole project; each package narrows it in its own exceptions module."""


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidRecord(PipelineError):
    """An input record cannot become a document; `reason` is a short stable code for dashboards."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
