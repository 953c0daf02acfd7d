"""Adapters made in the test, in seconds: LoRA folders for the tiny model, and for a model of other shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_adapter(model_dir: Path, target: Path, *, seed: int = 0) -> Path:
    """A LoRA adapter for `model_dir` with random (not zero) B matrices, so greedy answers change."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,  # random A and B: the adapter changes the model's outputs at once
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(str(target))
    return target


def make_foreign_adapter(target: Path) -> Path:
    """A LoRA adapter for a Llama of other shapes (hidden size 32): it fits no tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(str(target))
    return target
