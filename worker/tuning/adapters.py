"""LoRA adapter folders: who they are (a fingerprint), whether they fit a model, and merging them in.

A fingerprint is the SHA-256 of the adapter's weights file: it names one fine-tune wherever the folder is
copied, so a worker on another host can tell whether it serves the adapter a persona asks for. A merged
model folder (and its quantized copies) carries the fingerprint of the adapter merged into it in
`brandbot-tune.json`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from brandbot.errors import BrandbotError, EngineLoadError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TUNE_MARKER = "brandbot-tune.json"
"""In an adapter folder and in a merged model folder: the adapter's fingerprint and how it was made."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


class AdapterMismatch(BrandbotError):
    """The adapter was made for another base model (its shapes or layers differ)."""


def fingerprint(adapter_dir: Path) -> str:
    """The adapter's identity: SHA-256 of its weights (first 16 hex digits)."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise EngineLoadError(f"{adapter_dir} is not a LoRA adapter folder (no {ADAPTER_WEIGHTS})")
    digest = hashlib.sha256()
    with weights.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def merged_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint of the adapter merged into `model_dir`, or None for a model nobody tuned here."""
    marker = model_dir / TUNE_MARKER
    if not marker.is_file():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("adapter")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def served_fingerprint(model_dir: Path | None, lora_dir: Path | None) -> str | None:
    """The fine-tune a worker answers with: its `BRANDBOT_LORA_DIR`, else the one merged into its model."""
    if lora_dir is not None:
        return fingerprint(lora_dir)
    return merged_fingerprint(model_dir) if model_dir is not None else None


def check_adapter_fits(model: Any, adapter_dir: Path) -> None:
    """Raise `AdapterMismatch` (one line) unless every LoRA matrix matches a layer of `model`."""
    from safetensors import safe_open

    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterMismatch(f"{adapter_dir} is not a LoRA adapter folder (no {ADAPTER_WEIGHTS})")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with safe_open(str(weights), framework="pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
            shape = tuple(tensors.get_slice(key).get_shape())
            problem = _layer_problem(base, key, shape)
            if problem:
                raise AdapterMismatch(f"{adapter_dir}: made for another base model ({problem})")


def _layer_problem(base: Any, key: str, shape: tuple[int, ...]) -> str | None:
    for part in (".lora_A.", ".lora_B."):
        if part in key:
            module_path, _ = key.split(part, 1)
            break
    else:
        return None
    module_path = module_path.removeprefix("base_model.model.")
    try:
        module = base.get_submodule(module_path)
    except AttributeError:
        return f"this model has no layer {module_path}"
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    if in_features is None or out_features is None or len(shape) != 2:
        return None
    if ".lora_A." in key and shape[1] != in_features:
        return f"{module_path} takes {in_features} inputs here, the adapter {shape[1]}"
    if ".lora_B." in key and shape[0] != out_features:
        return f"{module_path} gives {out_features} outputs here, the adapter {shape[0]}"
    return None


def apply_adapter(model: Any, adapter_dir: Path) -> Any:
    """`model` with the adapter merged into its weights (checked first: a misfit is one clear line)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise EngineLoadError(
            "serving a LoRA adapter on the CPU engine needs peft: pip install '.[tune]'"
        ) from None
    try:
        check_adapter_fits(model, adapter_dir)
    except AdapterMismatch as error:
        raise EngineLoadError(str(error)) from None
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def copy_tokenizer_files(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def write_marker(folder: Path, **values: Any) -> None:
    (folder / TUNE_MARKER).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def replace_folder(partial: Path, target: Path) -> None:
    """Put a completely written folder in place; nothing half-written is ever at `target`."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def merge_adapter(model_dir: Path, adapter_dir: Path, target: Path) -> Path:
    """Write a full model folder at `target`: base weights with the adapter merged, tokenizer, template."""
    import torch
    from transformers import AutoModelForCausalLM

    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, str(saved.get("dtype") or saved.get("torch_dtype") or "float32"), torch.float32)
    merged = apply_adapter(model, adapter_dir).to(dtype)  # the base folder's own precision
    merged.save_pretrained(partial, safe_serialization=True)
    copy_tokenizer_files(model_dir, partial)
    write_marker(partial, adapter=fingerprint(adapter_dir), base=str(model_dir.resolve()), merged=True)
    replace_folder(partial, target)
    return target
