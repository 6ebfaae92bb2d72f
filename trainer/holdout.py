"""The held-out slice of a run's training set: rows the candidate never trains on, scored by the evaluation gate.

A row is held out by a hash of its document id, not by a random draw: the same document is held out in every
run, so no published model has seen any held-out row, and the candidate and the model it would replace are
compared on text neither was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.data import TRAIN_SCHEMA, TrainingSet

log = logging.getLogger(__name__)

_SCALE = float(1 << 64)


def _position(key: str) -> float:
    """A stable, uniform draw in [0, 1) from a row's key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / _SCALE


def _keys(table: pa.Table) -> list[str]:
    """Document id, else prompt id, else the row's position in its source file."""
    doc, prompt = table.column("doc_id").to_pylist(), table.column("prompt_id").to_pylist()
    files, rows = table.column("source_file").to_pylist(), table.column("source_row").to_pylist()
    return [d or p or f"{f}:{r}" for d, p, f, r in zip(doc, prompt, files, rows, strict=True)]


def split_holdout(tset: TrainingSet, heldout_path: Path, fraction: float, max_rows: int) -> TrainingSet:
    """Move the held-out rows from the training file to `heldout_path`; the returned set describes what is left.

    Rows whose key draws below `fraction` are held out, the lowest draws first, at most `max_rows`; when none
    does and the set has two rows or more, the lowest draw is held out anyway, so the gate always has a score;
    at least one row is always left to train on.
    """
    train_path = Path(tset.path)
    table = pq.read_table(train_path)
    draws = [_position(k) for k in _keys(table)]
    order = sorted(range(len(draws)), key=draws.__getitem__)
    picked = [i for i in order if draws[i] < fraction][: min(max_rows, len(draws) - 1)]  # never every row
    if not picked and len(draws) >= 2 and max_rows > 0:
        picked = order[:1]
    mask = pa.array([False] * len(draws))
    if picked:
        chosen = set(picked)
        mask = pa.array([i in chosen for i in range(len(draws))])
    kept, heldout = table.filter(pc.invert(mask)), table.filter(mask)
    _write(heldout, heldout_path)
    _write(kept, train_path)
    digest = hashlib.sha256()
    for messages in kept.column("messages").to_pylist():
        digest.update(orjson.dumps(messages) + b"\n")
    log.info("held out %d of %d rows for the evaluation gate (%s)", heldout.num_rows, table.num_rows, heldout_path)
    return replace(tset, rows=kept.num_rows, data_sha256=digest.hexdigest(), heldout_rows=heldout.num_rows)


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.cast(TRAIN_SCHEMA), tmp)
    os.replace(tmp, path)


def read_heldout(path: Path) -> list[list[dict[str, str]]]:
    """The held-out conversations (`messages` values), in file order."""
    if not path.is_file():
        return []
    return pq.read_table(path, columns=["messages"]).column("messages").to_pylist()
