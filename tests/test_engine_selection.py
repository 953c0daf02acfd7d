"""`BRANDBOT_ENGINE=auto`: the engine comes from the model folder and the machine; the worker says why.

Folders are the tiny model's (real tokenizer and weights) with config.json edited the way exllamav3's and
exllamav2's converters mark theirs (`quantization_config.quant_method`), or with tensors named as theirs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brandbot.errors import EngineLoadError
from brandbot.settings import EngineName
from tests.conftest import REPO, TEST_REDIS_URL, WorkerProcess
from worker.engines import select_engine
from worker.engines.selection import FolderFormat, Machine, choose_engine, folder_format, probe_machine

GPU = Machine(cuda=True, exllamav3=True)
GPU_WITHOUT_EXLLAMAV3 = Machine(cuda=True, exllamav3=False)
CPU = Machine(cuda=False, exllamav3=False)


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Callable[..., Path]:
    """A copy of the tiny model whose config.json gets `changes` (a None value deletes the key)."""

    def make(**changes: Any) -> Path:
        folder = Path(shutil.copytree(tiny_model, tmp_path / f"model-{len(list(tmp_path.iterdir()))}"))
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
        return folder

    return make


def with_tensor(folder: Path, name: str) -> Path:
    """Replace the weights with one tensor of this name (what a quantised folder's tensors are called)."""
    import torch
    from safetensors.torch import save_file

    (folder / "model.safetensors").unlink()
    save_file({name: torch.zeros(2, dtype=torch.int16)}, str(folder / "model.safetensors"))
    return folder


# -- the folder ----------------------------------------------------------------------------------------
def test_quant_method_in_config_json_marks_exl3_and_exl2_folders(model_copy: Callable[..., Path]) -> None:
    assert folder_format(model_copy()) is FolderFormat.HF
    exl3 = model_copy(quantization_config={"quant_method": "exl3", "version": "1.6.5", "bits": 4.0})
    assert folder_format(exl3) is FolderFormat.EXL3
    exl2 = model_copy(quantization_config={"quant_method": "exl2", "version": "0.3.2", "bits": 4.25})
    assert folder_format(exl2) is FolderFormat.EXL2


def test_older_conversions_without_quant_method_are_known_by_their_tensor_names(
    model_copy: Callable[..., Path],
) -> None:
    assert (
        folder_format(with_tensor(model_copy(), "model.layers.0.mlp.up_proj.q_weight")) is FolderFormat.EXL2
    )
    assert folder_format(with_tensor(model_copy(), "model.layers.0.mlp.up_proj.trellis")) is FolderFormat.EXL3
    assert folder_format(with_tensor(model_copy(), "model.layers.0.mlp.up_proj.weight")) is FolderFormat.HF


def test_a_folder_no_engine_can_load_gets_one_clear_line(
    model_copy: Callable[..., Path], tmp_path: Path
) -> None:
    gptq = model_copy(quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(
        EngineLoadError, match="quantization 'gptq' is not supported: use an EXL3, EXL2 or unq"
    ):
        folder_format(gptq)
    broken = model_copy()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],\n  "hidden_size": }')
    with pytest.raises(EngineLoadError, match=r"config.json is not valid JSON \(line 2\)"):
        folder_format(broken)
    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    (not_a_model / "cat.jpg").write_bytes(b"\xff\xd8")
    for name in EngineName:
        with pytest.raises(EngineLoadError, match=r"is not a model folder \(no config\.json\)") as info:
            select_engine(name, not_a_model, machine=GPU)
        assert "\n" not in str(info.value)
    with pytest.raises(EngineLoadError, match="BRANDBOT_MODEL_DIR is not set"):
        select_engine(EngineName.AUTO, None, machine=GPU)
    bad_weights = model_copy()
    (bad_weights / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(EngineLoadError, match=r"model\.safetensors is not a readable safetensors file"):
        folder_format(bad_weights)


# -- the choice ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("folder", "machine", "engine", "reason"),
    [
        (FolderFormat.EXL3, GPU, EngineName.EXLLAMAV3, "EXL3 model folder"),
        (FolderFormat.EXL2, GPU, EngineName.EXLLAMAV2, "EXL2 model folder"),
        (FolderFormat.HF, GPU, EngineName.EXLLAMAV3, "plain Hugging Face folder and a CUDA GPU"),
        (
            FolderFormat.HF,
            GPU_WITHOUT_EXLLAMAV3,
            EngineName.TRANSFORMERS,
            "plain Hugging Face folder; CUDA GPU but exllamav3 is not installed",
        ),
        (FolderFormat.HF, CPU, EngineName.TRANSFORMERS, "plain Hugging Face folder and no CUDA GPU"),
    ],
)
def test_auto_chooses_from_the_folder_and_the_machine(
    folder: FolderFormat, machine: Machine, engine: EngineName, reason: str
) -> None:
    choice = choose_engine(EngineName.AUTO, folder, machine)
    assert (choice.engine, choice.folder, choice.reason) == (engine, folder, reason)


def test_a_quantised_folder_on_a_machine_without_cuda_says_what_to_do() -> None:
    for name in (EngineName.AUTO, EngineName.EXLLAMAV3):
        with pytest.raises(EngineLoadError) as info:
            choose_engine(name, FolderFormat.EXL3, CPU)
        assert str(info.value) == (
            "an EXL3 model folder needs exllamav3 on a CUDA GPU and this machine has none:"
            " on CPU, use a plain Hugging Face folder (BRANDBOT_ENGINE=transformers)"
        )
    with pytest.raises(EngineLoadError, match=r"^an EXL2 model folder needs exllamav2 on a CUDA GPU"):
        choose_engine(EngineName.AUTO, FolderFormat.EXL2, CPU)


def test_a_named_engine_is_kept_unless_it_cannot_read_the_folder() -> None:
    for name in (EngineName.TRANSFORMERS, EngineName.EXLLAMAV2, EngineName.EXLLAMAV3):
        choice = choose_engine(name, FolderFormat.HF, CPU)
        assert (choice.engine, choice.reason) == (name, f"BRANDBOT_ENGINE={name}")
    assert choose_engine(EngineName.EXLLAMAV3, FolderFormat.EXL3, GPU).engine is EngineName.EXLLAMAV3
    with pytest.raises(
        EngineLoadError, match=r"^an EXL3 model folder needs BRANDBOT_ENGINE=exllamav3 \(or auto\), not"
    ):
        choose_engine(EngineName.TRANSFORMERS, FolderFormat.EXL3, GPU)
    with pytest.raises(EngineLoadError, match="an EXL2 model folder needs BRANDBOT_ENGINE=exllamav2"):
        choose_engine(EngineName.EXLLAMAV3, FolderFormat.EXL2, GPU)


def test_select_engine_reads_the_folder_then_chooses(model_copy: Callable[..., Path]) -> None:
    exl3 = model_copy(quantization_config={"quant_method": "exl3"})
    assert select_engine(EngineName.AUTO, exl3, machine=GPU).engine is EngineName.EXLLAMAV3
    assert select_engine(EngineName.AUTO, model_copy(), machine=CPU).engine is EngineName.TRANSFORMERS


def test_the_worker_refuses_an_exl3_folder_without_cuda_in_one_line(model_copy: Callable[..., Path]) -> None:
    if probe_machine().cuda:
        pytest.skip("this machine has CUDA")
    exl3 = model_copy(quantization_config={"quant_method": "exl3", "bits": 4.0})
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    env.update(BRANDBOT_MODEL_DIR=str(exl3), BRANDBOT_REDIS_URL=TEST_REDIS_URL, BRANDBOT_ENGINE="auto")
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "worker"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "brandbot: an EXL3 model folder needs exllamav3 on a CUDA GPU and this machine has none:"
        " on CPU, use a plain Hugging Face folder (BRANDBOT_ENGINE=transformers)"
    )


def test_probing_the_machine_does_not_import_the_gpu_engines() -> None:
    code = (
        "import sys; from worker.engines.selection import probe_machine; m = probe_machine();"
        " print(m.cuda, 'exllamav3' in sys.modules, 'exllamav2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    _, imported_v3, imported_v2 = out.stdout.split()
    assert (imported_v3, imported_v2) == ("False", "False")


# -- the worker says it ------------------------------------------------------------------------------
def test_the_worker_says_which_engine_which_mode_and_why(start_worker: Callable[..., WorkerProcess]) -> None:
    machine = probe_machine()
    if machine.cuda and machine.exllamav3:
        pytest.skip("on this machine auto chooses exllamav3 for a plain folder (the tiny CPU model)")
    worker = start_worker(engine="auto", log_format="json", worker_concurrency=3)
    ready = [
        json.loads(line)
        for line in worker.log().splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "worker ready"
    ]
    assert len(ready) == 1, worker.log()
    (line,) = ready
    assert line["engine"] == "transformers"
    assert line["mode"] == "continuous batching, up to 3 sequences per step"
    expected_reason = (
        "plain Hugging Face folder; CUDA GPU but exllamav3 is not installed"
        if machine.cuda
        else "plain Hugging Face folder and no CUDA GPU"
    )
    assert line["engine_reason"] == expected_reason
