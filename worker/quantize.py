"""`brandbot model quantize`: a merged model folder to EXL2 or EXL3 with exllamav2's or exllamav3's converter.

Both converters are scripts that run on a CUDA GPU (`python -m exllamav2.conversion.convert_exl2`,
`python -m exllamav3.conversion.convert_model`, read from exllamav2 0.3.2 and exllamav3 1.6.5): they are
run as they ship, in a subprocess, with a work folder for their own checkpoints. The result is written to
a hidden folder beside the target and renamed into place only once complete (nothing half-converted is
served), with the tokenizer files and the fine-tune's `brandbot-tune.json` carried over, so a worker on
the quantized folder still serves personas whose `lora:` is the adapter that was merged in.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from brandbot.errors import BrandbotError
from worker.engines import check_model_folder
from worker.engines.selection import FolderFormat, folder_format
from worker.tuning.adapters import TUNE_MARKER, replace_folder

CHAT_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    TUNE_MARKER,
)
"""Copied from the source folder when the converter did not (the chat template above all)."""


class QuantFormat(StrEnum):
    EXL2 = "exl2"
    EXL3 = "exl3"


@dataclass(frozen=True)
class Converter:
    package: str
    module: str
    default_bits: float

    def command(self, source: Path, work: Path, output: Path, bits: float) -> list[str]:
        if self.package == "exllamav2":  # -o is its work folder, -cf the finished model
            return [sys.executable, "-m", self.module, "-i", str(source), "-o", str(work), "-cf", str(output),
                    "-b", f"{bits:g}"]  # fmt: skip
        return [sys.executable, "-m", self.module, "-i", str(source), "-w", str(work), "-o", str(output),
                "-b", f"{bits:g}"]  # fmt: skip


CONVERTERS = {
    QuantFormat.EXL2: Converter("exllamav2", "exllamav2.conversion.convert_exl2", 4.125),
    QuantFormat.EXL3: Converter("exllamav3", "exllamav3.conversion.convert_model", 4.0),
}


class QuantizeUnavailable(BrandbotError):
    """This machine cannot quantize (no CUDA, or the converter's package is missing)."""


def check_can_quantize(
    fmt: QuantFormat, *, cuda: bool | None = None, installed: bool | None = None
) -> Converter:
    """The converter for `fmt`, or `QuantizeUnavailable` (one line) on a machine that cannot run it."""
    converter = CONVERTERS[fmt]
    if cuda is None:
        import torch

        cuda = bool(torch.cuda.is_available())
    if not cuda:
        raise QuantizeUnavailable(
            f"quantizing to {fmt.value.upper()} needs a CUDA GPU ({converter.package}'s converter runs on"
            " it); on this machine serve the merged folder as it is (CPU engine)"
        )
    if installed is None:
        installed = importlib.util.find_spec(converter.package) is not None
    if not installed:
        raise QuantizeUnavailable(
            f"quantizing to {fmt.value.upper()} needs {converter.package}: pip install '.[gpu]'"
        )
    return converter


def quantize(
    source: Path,
    target: Path,
    fmt: QuantFormat,
    *,
    bits: float | None = None,
    cuda: bool | None = None,
    installed: bool | None = None,
    run: Callable[[list[str]], int] | None = None,
) -> Path:
    """Convert `source` (a plain Hugging Face folder, e.g. `brandbot tune --merge`'s) into `target`."""
    check_model_folder(source)
    if folder_format(source) is not FolderFormat.HF:
        raise BrandbotError(
            f"{source} is already quantized ({folder_format(source).value}): give the merged folder"
        )
    converter = check_can_quantize(fmt, cuda=cuda, installed=installed)
    work = target.with_name(f".{target.name}.work")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    partial.mkdir(parents=True)
    command = converter.command(source, work, partial, bits or converter.default_bits)
    code = (run or _run)(command)
    if code != 0:
        raise BrandbotError(
            f"{converter.package}'s converter stopped with exit code {code} (its output is above); its work"
            f" folder {work} is kept, {target} is untouched"
        )
    for name in CHAT_FILES:
        if (source / name).is_file() and not (partial / name).exists():
            shutil.copy2(source / name, partial / name)
    replace_folder(partial, target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def _run(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode
