"""A tiny random chat model built on the fly, because model hubs are unreachable here and in CI.

`build_tiny_chat_model` writes a 2-layer Llama (hidden 128, 4 heads of 32: vLLM's CPU attention
needs head_dim >= 32) and a byte-level BPE tokenizer trained locally on a built-in corpus. The
same directory is served by vLLM on /v1/chat/completions and fine-tuned by TRL's SFTTrainer
(its chat template carries `{% generation %}` markers for assistant-only loss). Its weights are
random except for one habit: it ends its turn after a few tokens (see `_make_it_stop`), so
replies come back with finish_reason "stop" instead of being truncated.
"""

from __future__ import annotations

import random
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS, END_OF_TURN]

# Role markers are special tokens; the assistant content (and its end-of-turn marker, so the model
# learns to stop) sits inside {% generation %} for TRL's assistant_only_loss.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] }}{{ '<|end|>\n' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORD_TEXT = (
    "the a an of to in and or for with on at by from about into over after before under between "
    "web page document article section paragraph title author reader writer data model training "
    "instruction response request question answer explain describe summarize list compare write "
    "science history music travel cooking health garden city river mountain ocean forest weather "
    "energy solar battery engine computer network server client python code function test result "
    "people family school student teacher market price company product customer service support "
    "is are was were be been has have had will would can could should may might must do does did "
    "good new first last long great little own other old right big high small large next early "
    "time year day week month way world life hand part place case point number group problem fact"
)
_WORDS = tuple(_WORD_TEXT.split())


def _corpus(seed: int, n_paragraphs: int = 400) -> list[str]:
    """English-like paragraphs plus chat-shaped text, generated so the tokenizer has real merges."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    for _ in range(n_paragraphs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 16))]
            words[0] = words[0].capitalize()
            sentences.append(" ".join(words) + rng.choice([".", ".", ".", "?", "!"]))
        paragraphs.append(" ".join(sentences))
    paragraphs.append('0123456789 {}[]():;,"\'-_/#*=+<>@&%$ JSON {"key": "value", "n": 1}\n\t')
    return paragraphs


def _train_tokenizer(vocab_size: int, seed: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[*ROLE_TOKENS, END_OF_TURN],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Logit of <|end|> over the (near-uniform, ~0) rest of the vocabulary. At the reference sampling of the vLLM
# path (temperature 0.6, top_p 0.9, no top_k) a turn then ends with probability ~0.2 per token: ~5 tokens on
# average, and a 48-token cap is reached about once in 10^5 replies. At temperature 1.0 it is ~2.6% per token.
DEFAULT_STOP_LOGIT = 3.3
_STOP_CHANNEL = 2.0  # value of the reserved residual dimension; dominates the RMS norm of the residual


def _single_token(tokenizer, text: str) -> int:  # tokenizer: PreTrainedTokenizerFast
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not a single token: {ids}")
    return int(ids[0])


def _make_it_stop(model, *, eot_id: int, newline_id: int, stop_logit: float) -> None:  # model: LlamaForCausalLM
    """Give a random model the one habit tests need from a chat model: ending its turn, but never at once.

    A purely random model almost never samples <|end|> (1 in ~1000 per token), so every reply would run to
    max_tokens and come back with finish_reason "length", which the engine rightly treats as truncated
    output. Residual dimension 0 is reserved as a constant channel: every token embedding carries
    +_STOP_CHANNEL there, no attention or MLP block writes to it, and only <|end|>'s output row reads it, so
    <|end|> gets a fixed logit bonus of `stop_logit` at every position. The newline token carries
    -_STOP_CHANNEL instead: right after the "<|assistant|>\n" generation prompt <|end|> is all but
    impossible, so replies are not empty. The rest of the weights stay random.
    """
    import torch

    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, 0] = _STOP_CHANNEL
        embed[newline_id, 0] = -_STOP_CHANNEL
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        head = model.lm_head.weight
        head[:, 0] = 0.0
        # After the final RMSNorm the channel reads a little under sqrt(hidden) (it dominates the norm):
        # measure it on a probe sequence so that this row turns it into a logit of stop_logit.
        probe = torch.arange(8, 8 + 32).unsqueeze(0) % model.config.vocab_size
        channel = model.model(input_ids=probe).last_hidden_state[0, :, 0].mean().item()
        head[eot_id, 0] = stop_logit / channel


def build_tiny_chat_model(
    out_dir: Path,
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    max_position_embeddings: int = 2048,
    stop_logit: float = DEFAULT_STOP_LOGIT,
) -> Path:
    """Write a tiny random Llama chat model (safetensors + tokenizer + configs) to `out_dir`.

    Random weights, except that the model ends its turn like a chat model (see `_make_it_stop`):
    `stop_logit` sets how soon. Deterministic for a given seed; a few MB; builds in a second or two.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size, seed)
    eot_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,  # the stop channel needs its own output row (see _make_it_stop)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot_id],
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _make_it_stop(model, eot_id=eot_id, newline_id=_single_token(tokenizer, "\n"), stop_logit=stop_logit)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
