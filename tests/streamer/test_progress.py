from datetime import UTC, datetime

from core.outcomes import Rejection, SourceRef, Usage
from streamer.metrics import RunSummary
from streamer.progress import Progress


def test_bar_follows_the_run_summary(capsys) -> None:
    summary = RunSummary()
    progress = Progress(total=3, enabled=True)
    for i in range(3):
        summary.count(
            Rejection(
                f"d{i}",
                "request",
                "refused_request",
                "",
                SourceRef("s", 0, i),
                datetime.now(UTC),
                usage=Usage(2, 100, 20),
            )
        )
        progress.update(summary)
    progress.close()
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "rejected=3" in err
    assert "calls=6" in err
    assert "tokens=360" in err


def test_disabled_bar_prints_nothing(capsys) -> None:
    progress = Progress(total=None, enabled=False)
    progress.update(RunSummary())
    progress.close()
    assert capsys.readouterr().err == ""
