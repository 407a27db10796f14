"""Small random-weight models built from real architectures (invariance is about bits, not facts).

They borrow the embedded model's tokenizer, so prompts tokenize like real text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def save_word_tokenizer(folder: Path, words: str = "prompt 0 1 2 3") -> None:
    """A word-level tokenizer beside a model's weights (the GPU host has no embedded model to
    borrow one from): each word of `words` is an id from 3 up, anything else <unk> (0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, **{w: 3 + i for i, w in enumerate(words.split())}},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words -> ids, so prompts differ
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))


def tiny_config(arch: str, vocab: int = 49152):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "qwen3":
        return Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=2048,
                          bos_token_id=1, eos_token_id=2, pad_token_id=2, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    raise ValueError(arch)


def build_tiny_model(folder: Path, arch: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    # Scale weights up a little so random logits are not all near-ties (more realistic margins).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        src = tokenizer_dir / name
        if src.exists():
            shutil.copy(src, folder / name)
    return folder
