"""`python -m streamer.consume` on files, end to end against the in-repo OpenAI-compatible server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from consumers.webr.prompts import PROMPT_VERSION
from core.storage import resolve
from devtools.fakeopenai import FakeOpenAI, Fault
from streamer.files import file_stream_name
from tests.support.documents import CONSUME, REPO, consume_file, marker, page, read_outcomes, write_jsonl
from trainer.snapshot import take_snapshot

SECRET = "sk-test-NEVER-LOG-THIS-1234567890"


def consume(source: Path, output: Path, server: FakeOpenAI, *extra: str, env: dict[str, str] | None = None):
    flags = ["--seed", "7", "--max-concurrency", "8", "--roll-records", "10", "--log-level", "DEBUG"]
    return consume_file(source, output, server.url, *flags, *extra, api_key=SECRET, env={**os.environ, **(env or {})})


def read(output: Path, rejected: bool = False) -> list[dict]:
    return read_outcomes(output)[1 if rejected else 0]


def call_with_reply(server: FakeOpenAI, text: str):
    matches = [r for r in server.records if r.status == 200 and r.reply == text]
    assert len(matches) == 1, f"no unique call produced {text[:60]!r}"
    return matches[0]


def user_text(record) -> str:
    return "\n".join(m["content"] for m in record.messages if m["role"] == "user")


def test_every_document_ends_once_with_the_right_call_chain(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    docs = [{"id": f"doc-{i}", "webpage": page(i), "url": f"https://news.test/{i}"} for i in range(30)]
    source = write_jsonl(tmp_path / "pages.jsonl", docs, ["this is not json", json.dumps({"id": "no-text"})])
    out = tmp_path / "out"
    result = consume(source, out, fake_llm)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stderr and SECRET not in result.stdout

    rows, rejected = read(out), read(out, rejected=True)
    row_ids = [r["doc_id"] for r in rows]
    rej_ids = [r["doc_id"] for r in rejected]
    assert len(row_ids) == len(set(row_ids))
    assert set(row_ids) | {i for i in rej_ids if i} == {d["id"] for d in docs} | {"no-text"}
    assert len(rows) + len(rejected) == len(docs) + 2
    by_reason = {r["reason"] for r in rejected}
    assert {"not_json", "missing_text"} <= by_reason
    assert len(rows) >= 25, f"unexpected rejections: {[(r['doc_id'], r['reason']) for r in rejected]}"

    # answered calls; a reply cut at a step's learnt max_tokens ("length") was asked again, as an attempt
    ok_calls = [r for r in fake_llm.records if r.status == 200 and r.finish_reason != "length"]
    assert sum(r["llm_calls"] for r in rows) + sum(r["llm_calls"] or 0 for r in rejected) == len(ok_calls)
    assert sum(r["llm_attempts"] or 0 for r in rows + rejected) == len(fake_llm.records)
    for row in rows:
        i = int(row["doc_id"].split("-")[1])
        tag = marker(i)
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert row["prompt_version"] == PROMPT_VERSION
        assert row["source_url"] == f"https://news.test/{i}"
        assert row["category"].startswith(row["branch"])
        persona_call = call_with_reply(fake_llm, row["persona"])
        request_call = call_with_reply(fake_llm, row["request"])
        answer_call = call_with_reply(fake_llm, assistant["content"])
        assert tag in user_text(persona_call)
        assert row["persona"] in user_text(request_call) and tag in user_text(request_call)
        assert tag in user_text(answer_call) and row["request"] in user_text(answer_call)
        # the page leads every call that carries it (shared prefix for prompt caching)
        for call in (persona_call, request_call, answer_call):
            assert user_text(call).startswith(f"<document>\n{tag}")
        if row["branch"] == "WI":
            assert row["llm_calls"] == 3
            assert tag in user["content"] and row["request"] in user["content"]
        else:
            assert row["llm_calls"] == 4
            assert user["content"] == row["request"]
            rollout_calls = [
                r for r in ok_calls if r.reply and r.reply != row["request"] and r.reply in user_text(answer_call)
            ]
            assert len(rollout_calls) == 1
            assert user_text(rollout_calls[0]) == row["request"]  # the rollout carries no page
    assert {"WI", "WR"} == {r["branch"] for r in rows}


def test_summary_shows_prefix_cache_hits_and_the_cost_of_a_price_table(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    # the server is on loopback (vLLM semantics): only the price table's entry prices its model
    prices = tmp_path / "prices.toml"
    prices.write_text('["gpt-4o-mini"]\ninput = 1.0\ncached_input = 0.1\noutput = 2.0\n')
    # pages over the server's 1024-token minimum for caching a prefix, as OpenAI's
    docs = [{"id": f"doc-{i}", "webpage": page(i, paragraphs=120)} for i in range(8)]
    out = tmp_path / "out"
    result = consume(write_jsonl(tmp_path / "p.jsonl", docs), out, fake_llm, "--price-table", str(prices))
    assert result.returncode == 0, result.stderr[-3000:]
    rows, rejected = read_outcomes(out)
    prompt = sum(r["prompt_tokens"] or 0 for r in rows + rejected)
    cached = sum(r["cached_tokens"] or 0 for r in rows + rejected)
    cost = sum(r["cost_usd"] or 0.0 for r in rows + rejected)
    assert 0 < cached < prompt  # a document's calls after the first find its page in the server's cache
    for r in rows:
        paid = (r["prompt_tokens"] - r["cached_tokens"]) * 1.0 + r["cached_tokens"] * 0.1 + r["completion_tokens"] * 2.0
        assert r["cost_usd"] == pytest.approx(paid / 1e6)
    [summary] = [line for line in result.stderr.splitlines() if line.startswith("done:")]
    assert f"{prompt} prompt ({cached / prompt:.1%} prefix-cache hits)" in summary
    assert f"${cost:.4f}" in summary


def test_llm_failures_and_refusals_become_rejections_with_reasons(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    def responder(messages: list[dict[str, str]]) -> str | Fault | None:
        text = messages[-1]["content"]
        if marker(1) in text:
            return Fault.bad_request()
        if marker(2) in text:
            return Fault.server_error(503)
        if marker(3) in text and "Author profile" in text:
            return Fault.refusal()
        return None

    fake_llm.responder = responder
    docs = [{"id": f"doc-{i}", "webpage": page(i)} for i in range(6)]
    out = tmp_path / "out"
    result = consume(write_jsonl(tmp_path / "p.jsonl", docs), out, fake_llm, "--give-up-after", "1.5")
    assert result.returncode == 0, result.stderr[-3000:]
    rejected = {r["doc_id"]: r for r in read(out, rejected=True)}
    assert rejected["doc-1"]["reason"] == "llm_permanent"
    assert rejected["doc-1"]["stage"] == "persona"
    assert rejected["doc-2"]["reason"] == "llm_transient"
    assert rejected["doc-3"]["reason"] == "refused_request"
    assert rejected["doc-3"]["stage"] == "request"
    assert rejected["doc-3"]["payload"] == json.dumps(docs[3]).encode()  # the input line, byte for byte
    assert {r["doc_id"] for r in read(out)} == {"doc-0", "doc-4", "doc-5"}
    # a permanent error is not retried; a transient one is, until --give-up-after (1 s backoff, then 1-2 s)
    assert sum(marker(1) in r.messages[-1]["content"] for r in fake_llm.records) == 1
    assert sum(marker(2) in r.messages[-1]["content"] for r in fake_llm.records) == 2
    # every HTTP attempt the server saw is accounted to a document, failed ones included
    outcomes = read(out) + read(out, rejected=True)
    assert sum(o["llm_attempts"] for o in outcomes) == len(fake_llm.records)
    assert rejected["doc-2"]["llm_attempts"] == 2


def test_reruns_replace_their_own_files_and_other_inputs_add(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    out = tmp_path / "out"
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "webpage": page(i)} for i in range(12)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "webpage": page(100 + i)} for i in range(5)])
    assert consume(a, out, fake_llm).returncode == 0
    files_a = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert consume(a, out, fake_llm, "--roll-records", "5").returncode == 0  # same input, other boundaries
    ids = [r["doc_id"] for r in read(out)] + [r["doc_id"] for r in read(out, rejected=True)]
    assert sorted(ids) == sorted(f"a{i}" for i in range(12))
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) != files_a
    assert consume(b, out, fake_llm).returncode == 0
    ids = [r["doc_id"] for r in read(out)] + [r["doc_id"] for r in read(out, rejected=True)]
    assert sorted(ids) == sorted([f"a{i}" for i in range(12)] + [f"b{i}" for i in range(5)])
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]


def test_a_rerun_killed_midway_puts_no_offset_twice_in_a_snapshot(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    """A rerun with another roll size writes [0,3) beside the earlier [0,10), both below the earlier run's marker
    until the rerun completes and prunes: killed before that, a snapshot would take offsets 0..2 twice. The
    rerun withdraws the marker first, so a snapshot takes none of that input, and other inputs as before."""
    out = tmp_path / "out"
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "webpage": page(i)} for i in range(12)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "webpage": page(100 + i)} for i in range(5)])
    assert consume(a, out, fake_llm).returncode == 0
    assert consume(b, out, fake_llm).returncode == 0
    fake_llm.configure(latency_s=0.3)
    common = ["--source", str(a), "--output", str(out), "--base-url", fake_llm.url, "--model", "gpt-4o-mini"]
    flags = ["--seed", "7", "--max-concurrency", "2", "--roll-records", "3", "--no-progress"]
    rerun = subprocess.Popen([*CONSUME, *common, *flags], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = f"{file_stream_name(str(a))}+0+{0:020d}+{3:020d}+g0.parquet"
    try:
        deadline = time.monotonic() + 120
        while not list(out.rglob(first)) and rerun.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.rglob(first)), "the rerun published its first file"
    finally:
        rerun.kill()
        rerun.wait()

    snapshot, _ = take_snapshot(resolve(str(out)))
    ids = [r["doc_id"] for f in snapshot.files for r in pq.read_table(out / f.path).to_pylist()]
    rejected = [r["doc_id"] for r in read(out, rejected=True) if r["doc_id"].startswith("b")]
    assert sorted(ids + rejected) == [f"b{i}" for i in range(5)]


def test_json_array_input_and_output_loads_with_datasets(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    from datasets import load_dataset

    source = tmp_path / "pages.json"
    source.write_text(json.dumps([{"webpage": page(i)} for i in range(4)]))
    out = tmp_path / "out"
    assert consume(source, out, fake_llm).returncode == 0
    files = [str(f) for f in out.rglob("*.parquet") if "_rejected" not in f.parts]
    ds = load_dataset("parquet", data_files=files)["train"]
    assert ds.num_rows == 4
    assert ds[0]["messages"][0]["role"] == "user"
    assert len(ds[0]["doc_id"]) == 32  # a hash of the text when the input has no id


def test_invalid_settings_are_refused_with_a_clear_message(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [{"webpage": "x"}])
    result = consume(source, tmp_path / "out", fake_llm, "--max-concurrency", "0")
    assert result.returncode == 2
    assert "max_concurrency" in result.stderr
    assert SECRET not in result.stderr
    bad_config = tmp_path / "c.toml"
    bad_config.write_text('modle = "typo"\n')
    result = consume(source, tmp_path / "out", fake_llm, "--config", str(bad_config))
    assert result.returncode == 2
    assert "modle" in result.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [(b'model = "unterminated\n', "Illegal character"), (b'model = "caf\xe9"\n', "codec can't decode")],
)
def test_a_config_file_that_is_not_toml_is_invalid_settings_not_a_crash(
    tmp_path: Path, fake_llm: FakeOpenAI, content: bytes, said: str
) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [{"webpage": "x"}])
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    result = consume(source, tmp_path / "out", fake_llm, "--config", str(config))
    assert result.returncode == 2
    assert f"invalid settings: cannot read config file {config}" in result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    result = consume(source, tmp_path / "out", fake_llm, "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert f"invalid settings: config file {tmp_path / 'none.toml'} does not exist" in result.stderr


def test_flags_override_environment_override_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamer.settings import ConsumeSettings

    config = tmp_path / "c.toml"
    config.write_text('model = "from-toml"\nseed = 3\nmax_concurrency = 5\noutput = "o"\nsource = "s"\n')
    monkeypatch.setenv("WEBR_SEED", "4")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    settings = ConsumeSettings.load({"max_concurrency": 9}, config)
    assert (settings.llm.model, settings.webr.seed, settings.llm.max_concurrency) == ("from-toml", 4, 9)
    assert settings.llm.api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.llm)
    assert settings.llm.sampling.temperature == 0.6  # a non-OpenAI server gets the vLLM reference defaults


def test_base_urls_from_repeated_flags_commas_the_environment_or_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.consume import make_parser
    from streamer.settings import ConsumeSettings

    def load(*argv: str) -> tuple[str, ...]:
        args = make_parser().parse_args(["--source", "s", "--output", "o", *argv])
        return ConsumeSettings.from_args(args).llm.base_urls

    a, b, c = "http://vllm-0:8000/v1", "http://vllm-1:8000/v1", "http://vllm-2:8000/v1"
    assert load("--base-url", a) == (a,)
    assert load("--base-url", a, "--base-url", f"{b},{c}") == (a, b, c)
    monkeypatch.setenv("WEBR_BASE_URL", f"{a}, {b}")
    assert load() == (a, b)
    assert load("--base-url", c) == (c,)  # a flag wins over the environment
    monkeypatch.delenv("WEBR_BASE_URL")
    config = tmp_path / "c.toml"
    config.write_text(f'base_url = ["{a}", "{b}"]\n')
    assert load("--config", str(config)) == (a, b)


def test_long_pages_are_cut_by_tokens_and_huge_ones_rejected(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    docs = [
        {"id": "short", "webpage": page(1)},
        {"id": "long", "webpage": "\n".join(page(i) for i in range(2, 12))},
        {"id": "huge", "webpage": "word " * 3000},
    ]
    out = tmp_path / "out"
    result = consume(
        write_jsonl(tmp_path / "p.jsonl", docs), out, fake_llm, "--max-page-tokens", "300", "--max-page-chars", "10000"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["doc_id"]: r for r in read(out)}
    assert rows["short"]["page_truncated"] is False
    assert rows["long"]["page_truncated"] is True
    assert rows["long"]["page_tokens"] == 300
    persona_call = call_with_reply(fake_llm, rows["long"]["persona"])
    assert marker(11) not in user_text(persona_call)  # the cut text never reaches the model
    rejected = read(out, rejected=True)
    assert [(r["doc_id"], r["reason"], r["llm_calls"]) for r in rejected] == [("huge", "page_too_large", 0)]
