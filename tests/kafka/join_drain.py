"""Run the join-then-drain scenario N times against a fresh tansu and the fake OpenAI server (by hand, not in CI):

    .venv/bin/python -m tests.kafka.join_drain --runs 10 [--idle 4] [--session-timeout-ms 3000]

Three members join a few seconds apart while the first works, then a fourth; all drain with --stop-after-idle.
Per run: exact or not, documents missing, exit codes, seconds from the group's last commit to each exit, and the
revocations (running documents finished in the grace period / cancelled, revocation commits that failed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import TansuBroker, create_topic
from tests.kafka.scenarios import join_then_drain, llm_attempts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=float, default=4.0)
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.2, 0.6))
    parser.add_argument("extra", nargs="*", help="more consumer flags, after --")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="join-drain-"))
    broker = TansuBroker(root / "tansu.log")
    broker.start()
    exact = 0
    try:
        for run in range(args.runs):
            with FakeOpenAI(latency_s=tuple(args.latency)) as llm:
                work = root / f"run{run}"
                work.mkdir()
                topic = create_topic(broker, 3)
                result = join_then_drain(
                    topic, llm.url, work, idle_s=args.idle, docs=args.docs, extra=tuple(args.extra)
                )
                revs = result.revocations()
                summary = {
                    "run": run,
                    "exact": result.exact,
                    "missing": result.missing,
                    "exit_codes": {n: rc for n, (rc, _) in result.exits.items()},
                    "exit_after_drained_s": {n: round(d, 1) for n, d in result.exit_delays.items()},
                    "revocations": len(revs),
                    "finished_in_grace": sum(e.get("finished", 0) for e in revs),
                    "cancelled": sum(e.get("cancelled", 0) for e in revs),
                    "failed_revocation_commits": result.failed_revocation_commits(),
                    "superseded_files": len(result.out.superseded),
                    "llm_calls": len(llm.records),
                    "llm_calls_in_output": llm_attempts(result.out),
                    "logs": str(work),
                }
                exact += result.exact and all(rc == 0 for rc, _ in result.exits.values())
                print(json.dumps(summary), flush=True)
    finally:
        broker.stop()
    print(f"{exact}/{args.runs} runs exact with every member exiting 0")


if __name__ == "__main__":
    main()
