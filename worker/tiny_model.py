"""Build a real, tiny Hugging Face model folder in seconds: BPE tokenizer, random Llama, chat template.

It talks nonsense, but every code path (tokenizer, template, generation, streaming) is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from brandbot.progress import Step, no_progress

BOS, EOS, PAD = "<|begin_of_text|>", "<|im_end|>", "<|pad|>"
TURN_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, TURN_START]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Enough varied English for a small BPE vocabulary; the model's weights are random anyway.
CORPUS = """
Thanks for reaching out! Here is how to reset your password: open settings, choose security, and follow
the link we email you. Our support team is happy to help with billing, accounts, deployments and outages.
The build failed because a test timed out; rerun the pipeline, check the logs, and open an incident if
production is affected. Markdown works too: **bold**, _italic_, `code`, lists and ```fenced blocks```.
Hello, how can I help you today? Please tell me more about the problem you are seeing with the service.
The quick brown fox jumps over the lazy dog while the engineers deploy version 2.4.1 to the cluster.
""".strip()

Size = Literal["cpu", "gpu"]
# "gpu" shapes suit ExLlamaV2's kernels (head size 128, hidden a multiple of 128) and stay small.
SHAPES: dict[Size, dict[str, int]] = {
    "cpu": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
    "gpu": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 2048,
    },
}


def build_tiny_model(
    folder: Path,
    *,
    size: Size = "cpu",
    context_length: int = 2048,
    seed: int = 0,
    step: Step = no_progress,
) -> Path:
    """Write a complete model folder (config, safetensors weights, tokenizer, chat template) and return it.

    `step` is told as each of its 3 steps starts (`brandbot.progress`).
    """
    step("training the tokenizer")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # ours (`step`) says the same once

    shape = SHAPES[size]
    folder.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=shape["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=context_length
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    step("building random weights")
    torch.manual_seed(seed)
    config_values: dict[str, Any] = {
        **shape,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": context_length,
        "bos_token_id": tokenizer.convert_tokens_to_ids(BOS),
        "eos_token_id": tokenizer.convert_tokens_to_ids(EOS),
        "pad_token_id": tokenizer.convert_tokens_to_ids(PAD),
        "tie_word_embeddings": False,
    }
    model: Any = LlamaForCausalLM(LlamaConfig(**config_values))
    model = model.to(torch.float16)
    step("saving the folder")
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (folder / "brandbot-tiny.json").write_text(json.dumps({"size": size, "seed": seed}), encoding="utf-8")
    return folder
