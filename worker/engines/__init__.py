"""Engines behind one interface (`Engine`); each backend is one module, imported only when chosen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brandbot.errors import EngineLoadError
from brandbot.settings import EngineName
from worker.engines.base import Engine
from worker.engines.selection import EngineChoice, Machine, choose_engine, folder_format, probe_machine


@dataclass(frozen=True)
class GpuOptions:
    """What only the GPU engines read, and the LoRA adapter (ExLlamaV2 and the CPU engine)."""

    cache_type: str = "fp16"
    cache_tokens: int | None = None
    gpu_split: list[float] | None = None
    lora_dir: Path | None = None


def check_model_folder(model_dir: Path) -> None:
    """Fail before loading anything if the folder cannot be a complete Hugging Face-format model."""
    if not (model_dir / "config.json").is_file():
        raise EngineLoadError(
            f"{model_dir} is not a model folder (no config.json): check BRANDBOT_MODEL_DIR"
            " or build one with `brandbot model tiny DIR`"
        )
    missing = []
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        missing.append("*.safetensors weights")
    if missing:
        raise EngineLoadError(
            f"{model_dir} is incomplete (missing {' and '.join(missing)}): copy the whole model folder there"
        )


def select_engine(
    name: EngineName, model_dir: Path | None, *, machine: Machine | None = None
) -> EngineChoice:
    """Which engine loads this folder and why (`auto` decides from the folder and the machine)."""
    if model_dir is None:
        raise EngineLoadError(
            "BRANDBOT_MODEL_DIR is not set: point it at a model folder (try `brandbot model tiny`)"
        )
    check_model_folder(model_dir)
    return choose_engine(name, folder_format(model_dir), machine or probe_machine())


def load_engine(
    name: EngineName, model_dir: Path | None, *, concurrency: int, gpu: GpuOptions | None = None
) -> Engine:
    """Load the engine once; the GPU engines are imported only here, on demand (they build CUDA code)."""
    name = select_engine(name, model_dir).engine
    assert model_dir is not None
    if name is EngineName.EXLLAMAV3:
        from worker.engines.exllamav3 import ExLlamaV3Engine

        gpu = gpu or GpuOptions()
        if gpu.lora_dir is not None:
            raise EngineLoadError(
                "BRANDBOT_LORA_DIR needs BRANDBOT_ENGINE=exllamav2 (an EXL2 or plain folder); for ExLlamaV3"
                " serve a merged folder instead (`brandbot tune --merge`, then `brandbot model quantize`)"
            )
        return ExLlamaV3Engine(
            model_dir,
            concurrency=concurrency,
            cache_type=gpu.cache_type,
            cache_tokens=gpu.cache_tokens,
            gpu_split=gpu.gpu_split,
        )
    if name is EngineName.EXLLAMAV2:
        from worker.engines.exllamav2 import ExLlamaV2Engine

        gpu = gpu or GpuOptions()
        return ExLlamaV2Engine(
            model_dir,
            concurrency=concurrency,
            cache_type=gpu.cache_type,
            cache_tokens=gpu.cache_tokens,
            gpu_split=gpu.gpu_split,
            lora_dir=gpu.lora_dir,
        )
    from worker.engines.transformers import TransformersEngine

    return TransformersEngine(model_dir, concurrency=concurrency, lora_dir=(gpu or GpuOptions()).lora_dir)
