"""The fixed Arrow schemas of the output: declared once, never inferred per batch."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from core.outcomes import PairRow, Rejection

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
TIMESTAMP = pa.timestamp("us", tz="UTC")

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("request", pa.string()),
        pa.field("branch", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("persona", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64()),
        pa.field("llm_calls", pa.int32()),
        pa.field("llm_attempts", pa.int32()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cached_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("page_tokens", pa.int32()),
        pa.field("page_truncated", pa.bool_()),
        pa.field("page_hash", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_partition", pa.int32()),
        pa.field("source_offset", pa.int64()),
        pa.field("metadata", pa.string()),
        pa.field("created_at", TIMESTAMP, nullable=False),
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_partition", pa.int32()),
        pa.field("source_offset", pa.int64()),
        pa.field("llm_calls", pa.int32()),
        pa.field("llm_attempts", pa.int32()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cached_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),  # None: the model has no price
        pa.field("payload", pa.binary()),
        pa.field("created_at", TIMESTAMP, nullable=False),
    ]
)


def pairs_table(rows: Sequence[PairRow]) -> pa.Table:
    """Rows -> a table of exactly `PAIRS_SCHEMA`."""
    return pa.Table.from_pylist(
        [
            {
                "doc_id": r.doc_id,
                "prompt_id": r.prompt_id,
                "messages": r.messages,
                "request": r.request,
                "branch": r.branch,
                "category": r.category,
                "persona": r.persona,
                "source_url": r.source_url,
                "model": r.model,
                "prompt_version": r.prompt_version,
                "seed": r.seed,
                "llm_calls": r.usage.calls,
                "llm_attempts": r.usage.attempts,
                "prompt_tokens": r.usage.prompt_tokens,
                "completion_tokens": r.usage.completion_tokens,
                "cached_tokens": r.usage.cached_tokens,
                "total_tokens": r.usage.prompt_tokens + r.usage.completion_tokens,
                "cost_usd": r.usage.cost_usd,
                "page_tokens": r.page_tokens,
                "page_truncated": r.page_truncated,
                "page_hash": r.page_hash,
                "source": r.ref.source,
                "source_partition": r.ref.partition,
                "source_offset": r.ref.offset,
                "metadata": r.metadata_json,
                "created_at": r.created_at,
            }
            for r in rows
        ],
        schema=PAIRS_SCHEMA,
    )


def rejected_table(rejections: Sequence[Rejection]) -> pa.Table:
    """Rejections -> a table of exactly `REJECTED_SCHEMA`."""
    return pa.Table.from_pylist(
        [
            {
                "doc_id": r.doc_id,
                "stage": r.stage,
                "reason": r.reason,
                "detail": r.detail,
                "source_url": r.source_url,
                "source": r.ref.source,
                "source_partition": r.ref.partition,
                "source_offset": r.ref.offset,
                "llm_calls": r.usage.calls,
                "llm_attempts": r.usage.attempts,
                "prompt_tokens": r.usage.prompt_tokens,
                "completion_tokens": r.usage.completion_tokens,
                "cached_tokens": r.usage.cached_tokens,
                "cost_usd": r.usage.cost_usd,
                "payload": r.payload,
                "created_at": r.created_at,
            }
            for r in rejections
        ],
        schema=REJECTED_SCHEMA,
    )
