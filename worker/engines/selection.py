"""Which engine loads a model folder (`BRANDBOT_ENGINE=auto`), and why — decided before anything loads.

- EXL3 folder (config.json `quantization_config.quant_method` is `exl3`, as exllamav3's converter writes
  it) → exllamav3.
- EXL2 folder (`quant_method` `exl2`, as exllamav2's converter writes it; older conversions without it are
  recognised by their `.q_weight` tensors) → exllamav2.
- Plain Hugging Face folder → exllamav3 when a CUDA GPU is present and exllamav3 is installed, else
  transformers (CPU).

`folder_format` reads the folder; `choose_engine` is pure (folder format, requested engine, what the machine
has); `probe_machine` looks at the machine without importing exllamav3 (which builds CUDA code at import).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from brandbot.errors import EngineLoadError
from brandbot.settings import EngineName

SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # a header larger than this is not a safetensors header
EXL2_TENSOR_SUFFIX = ".q_weight"  # exllamav2's quantised linear layers
EXL3_TENSOR_SUFFIX = ".trellis"  # exllamav3's quantised linear layers


class FolderFormat(StrEnum):
    EXL3 = "EXL3"
    EXL2 = "EXL2"
    HF = "plain Hugging Face"


@dataclass(frozen=True)
class Machine:
    """What the engine choice depends on beyond the folder."""

    cuda: bool
    exllamav3: bool


@dataclass(frozen=True)
class EngineChoice:
    engine: EngineName
    folder: FolderFormat
    reason: str


def folder_format(model_dir: Path) -> FolderFormat:
    """How the folder's weights are stored; EngineLoadError (one line) if config.json cannot be read."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise EngineLoadError(
            f"{config_path} cannot be read ({error.strerror}): check BRANDBOT_MODEL_DIR"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise EngineLoadError(
            f"{config_path} is not valid JSON{where}: copy the model folder again"
        ) from None
    if not isinstance(config, dict):
        raise EngineLoadError(f"{config_path} is not a model config (not a JSON object)")
    quantization = config.get("quantization_config") or {}
    method = str(quantization.get("quant_method", "")).lower() if isinstance(quantization, dict) else ""
    if method == "exl3":
        return FolderFormat.EXL3
    if method == "exl2":
        return FolderFormat.EXL2
    if method:
        raise EngineLoadError(
            f"{config_path}: quantization {method!r} is not supported: use an EXL3, EXL2 or unquantised model"
        )
    suffixes = _tensor_suffixes(model_dir)
    if EXL3_TENSOR_SUFFIX in suffixes:
        return FolderFormat.EXL3
    if EXL2_TENSOR_SUFFIX in suffixes:
        return FolderFormat.EXL2
    return FolderFormat.HF


def choose_engine(requested: EngineName, folder: FolderFormat, machine: Machine) -> EngineChoice:
    """The engine for this folder on this machine, with the reason logged at start; refuses a mismatch."""
    needs = {FolderFormat.EXL3: EngineName.EXLLAMAV3, FolderFormat.EXL2: EngineName.EXLLAMAV2}.get(folder)
    if needs is not None and not machine.cuda:
        raise EngineLoadError(
            f"an {folder} model folder needs {needs} on a CUDA GPU and this machine has none:"
            " on CPU, use a plain Hugging Face folder (BRANDBOT_ENGINE=transformers)"
        )
    if requested is not EngineName.AUTO:
        if needs is not None and requested is not needs:
            raise EngineLoadError(
                f"an {folder} model folder needs BRANDBOT_ENGINE={needs} (or auto), not {requested}"
            )
        return EngineChoice(requested, folder, f"BRANDBOT_ENGINE={requested}")
    if folder is FolderFormat.EXL3:
        return EngineChoice(EngineName.EXLLAMAV3, folder, "EXL3 model folder")
    if folder is FolderFormat.EXL2:
        return EngineChoice(EngineName.EXLLAMAV2, folder, "EXL2 model folder")
    if not machine.cuda:
        return EngineChoice(EngineName.TRANSFORMERS, folder, "plain Hugging Face folder and no CUDA GPU")
    if not machine.exllamav3:
        return EngineChoice(
            EngineName.TRANSFORMERS,
            folder,
            "plain Hugging Face folder; CUDA GPU but exllamav3 is not installed",
        )
    return EngineChoice(EngineName.EXLLAMAV3, folder, "plain Hugging Face folder and a CUDA GPU")


def probe_machine() -> Machine:
    """CUDA, and whether exllamav3 is installed (looked up without importing it)."""
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except ImportError:
        cuda = False
    return Machine(cuda=cuda, exllamav3=importlib.util.find_spec("exllamav3") is not None)


def _tensor_suffixes(model_dir: Path) -> set[str]:
    """Last name parts of the tensors in the folder's first safetensors file (read from its header only)."""
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        return set()
    try:
        with shards[0].open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > SAFETENSORS_HEADER_LIMIT:
                raise ValueError("header too large")
            header = json.loads(file.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise EngineLoadError(f"{shards[0]} is not a readable safetensors file ({error})") from None
    return {"." + name.rsplit(".", 1)[-1] for name in header if isinstance(name, str) and "." in name}
