"""The tiny chat model that the vLLM end-to-end test serves and the trainer's tests fine-tune.

If it stops loading, or its chat template loses the assistant mask, both of those break in
confusing ways; these checks say so directly and in a few seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.tiny_model import END_OF_TURN, build_tiny_chat_model

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Write about the garden."},
    {"role": "assistant", "content": "The garden is green and the river is long."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build per module: it takes a couple of seconds."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_loads_and_runs_with_auto_classes(model_dir: Path) -> None:
    """vLLM and TRL load the model through the Auto classes; a forward pass must work on CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    assert config.head_dim >= 32, "vLLM's CPU attention needs head_dim >= 32"
    assert config.num_hidden_layers == 2
    assert config.hidden_size == 128
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer("The garden is green.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.bos_token
    assert tokenizer.eos_token
    assert tokenizer.pad_token
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    total_bytes = sum(p.stat().st_size for p in model_dir.iterdir())
    assert total_bytes < 10_000_000


def test_chat_template_masks_only_assistant_content(model_dir: Path) -> None:
    """TRL's assistant_only_loss relies on {% generation %}: the mask must cover exactly the answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    assert ids[0] == tokenizer.bos_token_id
    answer = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert answer == MESSAGES[-1]["content"] + END_OF_TURN + "\n"
    # Round trip: byte-level BPE decodes the prompt text exactly, role markers included.
    text = tokenizer.decode(ids)
    for message in MESSAGES:
        assert f"<|{message['role']}|>\n{message['content']}{END_OF_TURN}" in text
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_role_markers_are_single_special_tokens(model_dir: Path) -> None:
    """A page that happens to contain a role marker's letters must not split into a fake turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for marker in ("<|user|>", "<|assistant|>", "<|system|>", END_OF_TURN):
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, marker
        assert marker in tokenizer.all_special_tokens


def test_replies_end_their_turn_soon_but_not_at_once(model_dir: Path) -> None:
    """The engine rejects truncated (finish_reason "length") and empty replies; the served model must avoid both.

    Sampled as vLLM does with the reference settings of the vLLM path: temperature 0.6, top_p 0.9, no top_k.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(
        **inputs,
        max_new_tokens=48,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        top_k=0,
        num_return_sequences=100,
        pad_token_id=tokenizer.pad_token_id,
    )
    stop_ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id}
    lengths = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        lengths.append(next((i for i, t in enumerate(row) if t in stop_ids), len(row)))
    assert min(lengths) >= 1, "a reply ended before its first token: the engine would see empty content"
    assert max(lengths) < 48, "a reply ran to max_tokens: the engine would see finish_reason 'length'"
    assert 2 <= sum(lengths) / len(lengths) <= 12


def test_build_is_deterministic_per_seed(model_dir: Path, tmp_path: Path) -> None:
    """Tests compare runs; the same seed must give the same bytes, another seed other weights."""
    again = build_tiny_chat_model(tmp_path / "again")
    assert _digest(again) == _digest(model_dir)
    other = _digest(build_tiny_chat_model(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != _digest(model_dir)["model.safetensors"]
