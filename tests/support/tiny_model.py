"""A tiny random chat model built on the fly, because model hubs are unreachable here and in CI.

`build_tiny_chat_model` writes a 2-layer Llama (hidden 128, 4 heads of 32: vLLM's CPU attention
needs head_dim >= 32) and a byte-level BPE tokenizer trained locally on a built-in corpus. The
same directory is served by vLLM on /v1/chat/completions and fine-tuned by TRL's SFTTrainer
(its chat template carries `{% generation %}` markers for assistant-only loss).
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


def build_tiny_chat_model(
    out_dir: Path,
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a tiny random Llama chat model (safetensors + tokenizer + configs) to `out_dir`.

    Deterministic for a given seed; a few MB; builds in about a second on a CPU.
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
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot_id],
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
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
