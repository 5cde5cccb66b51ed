"""A tiny random ``nemotron_h`` model, built locally: the CPU scale of fastnemo and the tests' model.

It keeps every layer kind of Nemotron-3-Nano (Mamba-2, attention, MoE with a shared expert) at toy widths,
and a byte-level BPE tokenizer trained here with ``tokenizers`` whose chat template renders turns the way
Nemotron-3-Nano's does: ``<|im_start|>role\\n...<|im_end|>``, the assistant turn opened in reasoning mode
with ``<think>\\n``, the reasoning closed by ``</think>`` before the answer.
"""

from __future__ import annotations

import random
from pathlib import Path

from fastnemo.files import atomic_dir

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Nemotron-3-Nano's layout, minus tool calls and the history-trimming of earlier reasoning: a system turn
# (empty when none is given), user/assistant turns, and a generation prompt that opens reasoning.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n<think>\n{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% else %}<think>\n{% endif %}"
    "{% endif %}"
)


_ALPHABET = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ +-*/=^%$#@!?()[]{}<>|\\:;'\".,~`"


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Puzzle prompts and traces from the generators, so the BPE merges fit the text it will see."""
    from puzzles import categories

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        category = categories.CATEGORIES[i % len(categories.CATEGORIES)]
        puzzle = categories.generate(category, rng)
        texts.append(puzzle.prompt)
        solution = categories.solve(puzzle)
        if solution is not None:
            try:
                texts.append(categories.trace(puzzle, solution))
            except ValueError:  # puzzles.base.NotTeachable: a cryptarithm with no recall trace
                pass
    texts.append(_ALPHABET)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(vocab_size: int, **overrides):
    """A NemotronHConfig with Mamba, attention and MoE layers at toy sizes (fast on 2 CPU cores)."""
    from transformers import NemotronHConfig

    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "mamba_num_heads": 8,
        "mamba_head_dim": 16,
        "ssm_state_size": 16,
        "n_groups": 2,
        "conv_kernel": 4,
        "chunk_size": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "moe_shared_expert_intermediate_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 8192,
        "use_mamba_kernels": False,
        "pad_token_id": 3,
        "bos_token_id": 1,
        "eos_token_id": 5,
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    return NemotronHConfig(**kwargs)


def build_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random nemotron_h model and its tokenizer to ``out_dir`` (atomically: a half-built model
    never sits at the final path)."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model; refusing to overwrite it")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):  # fail before the slow part
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; refusing to overwrite it")
    tokenizer = train_tokenizer(_corpus(seed=seed), vocab_size=vocab_size)
    ids = tokenizer.convert_tokens_to_ids
    config = tiny_config(
        len(tokenizer),
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<s>"),
        eos_token_id=ids("<|im_end|>"),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # only an empty folder may be replaced
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
