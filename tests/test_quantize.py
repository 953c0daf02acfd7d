"""`brandbot model quantize`: one clear line where it cannot run; the converters' output lands whole or not
at all, with the chat template and the fine-tune's identity carried over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brandbot.cli import app
from brandbot.errors import BrandbotError
from worker.quantize import QuantFormat, QuantizeUnavailable, quantize
from worker.tuning.adapters import TUNE_MARKER, merged_fingerprint

runner = CliRunner()


def cuda_present() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(cuda_present(), reason="this machine has CUDA: the converter would really run")
@pytest.mark.parametrize("fmt", ["exl2", "exl3"])
def test_quantize_without_cuda_stops_with_one_line(tiny_model: Path, tmp_path: Path, fmt: str) -> None:
    result = runner.invoke(app, ["model", "quantize", str(tiny_model), str(tmp_path / "q"), "--format", fmt])

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"brandbot: quantizing to {fmt.upper()} needs a CUDA GPU"
        f" ({'exllamav2' if fmt == 'exl2' else 'exllamav3'}'s converter runs on it);"
        " on this machine serve the merged folder as it is (CPU engine)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a work folder


def test_quantize_without_the_converter_package_says_what_to_install(
    tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(QuantizeUnavailable, match=r"needs exllamav3: pip install '\.\[gpu\]'"):
        quantize(tiny_model, tmp_path / "q", QuantFormat.EXL3, cuda=True, installed=False)


class GpuConverterDouble:
    """Stands in for the GPU converter (the only thing here that needs CUDA): writes weights and config into
    the folder it was given, or fails half-way."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command)
        flag = "-cf" if "-cf" in command else "-o"
        output = Path(command[command.index(flag) + 1])
        (output / "config.json").write_text("{}", encoding="utf-8")
        if self.fail:
            return 1
        (output / "model.safetensors").write_bytes(b"quantized")
        return 0


def merged_folder(tiny_model: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path / "merged"))
    (folder / TUNE_MARKER).write_text(json.dumps({"adapter": "abc123", "merged": True}), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("fmt", "module"),
    [
        (QuantFormat.EXL2, "exllamav2.conversion.convert_exl2"),
        (QuantFormat.EXL3, "exllamav3.conversion.convert_model"),
    ],
)
def test_quantized_folder_lands_whole_with_template_and_fine_tune_identity(
    tiny_model: Path, tmp_path: Path, fmt: QuantFormat, module: str
) -> None:
    merged = merged_folder(tiny_model, tmp_path)
    converter = GpuConverterDouble()
    target = quantize(merged, tmp_path / "q", fmt, bits=5.0, cuda=True, installed=True, run=converter)

    (command,) = converter.commands
    assert command[1:3] == ["-m", module] and command[command.index("-b") + 1] == "5"
    assert (target / "chat_template.jinja").read_text() == (merged / "chat_template.jinja").read_text()
    assert merged_fingerprint(target) == "abc123"  # personas whose lora: was merged in still match
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged", "q"]  # work folders cleaned up


def test_failed_conversion_leaves_the_previous_folder_in_place(tiny_model: Path, tmp_path: Path) -> None:
    merged = merged_folder(tiny_model, tmp_path)
    previous = tmp_path / "q"
    previous.mkdir()
    (previous / "model.safetensors").write_bytes(b"the one being served")

    with pytest.raises(BrandbotError, match="stopped with exit code 1"):
        quantize(
            merged, previous, QuantFormat.EXL2, cuda=True, installed=True, run=GpuConverterDouble(fail=True)
        )

    assert (previous / "model.safetensors").read_bytes() == b"the one being served"
