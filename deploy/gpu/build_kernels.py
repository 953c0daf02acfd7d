"""Compile the engines' CUDA extensions at image build time and install them as ordinary modules.

    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX" TORCH_EXTENSIONS_DIR=/tmp/kernel-build \
        python build_kernels.py exllamav2.ext:exllamav2_ext exllamav3.ext:exllamav3_ext

Each argument names a module that JIT-builds an extension on import (torch.utils.cpp_extension.load) and
the attribute holding the loaded extension. ExLlamaV2 and ExLlamaV3 import `exllamav2_ext` /
`exllamav3_ext` when such a compiled module is importable and only JIT-compile otherwise. So: import each
module once (the JIT build runs here, into TORCH_EXTENSIONS_DIR), copy the compiled module into
site-packages under its own name, then check in a fresh interpreter, with an empty TORCH_EXTENSIONS_DIR,
that every import now finds the installed module and nothing is compiled. Exits non-zero otherwise, so the
image build fails instead of a worker compiling at its first start.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CHECK = """
import importlib, importlib.util, os, sys
for target in sys.argv[1:]:
    module_name, attribute = target.split(":")
    module = importlib.import_module(module_name)
    loaded = getattr(module, attribute).__file__
    spec = importlib.util.find_spec(attribute)
    assert spec is not None and spec.origin == loaded, (attribute, spec, loaded)
    print(f"{attribute}: {loaded}")
assert not os.listdir(os.environ["TORCH_EXTENSIONS_DIR"]), "an extension was compiled at import"
"""


def build(target: str, destination: Path) -> Path:
    """JIT-build one extension by importing its module; copy the compiled module into `destination`."""
    module_name, attribute = target.split(":")
    started = time.monotonic()
    module = importlib.import_module(module_name)
    compiled = Path(getattr(module, attribute).__file__)
    installed = destination / f"{attribute}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    shutil.copy2(compiled, installed)
    print(f"{attribute}: built in {time.monotonic() - started:.0f} s, installed as {installed}", flush=True)
    return installed


def check(targets: list[str]) -> None:
    """Import every target in a fresh interpreter that must not compile anything."""
    with tempfile.TemporaryDirectory() as empty:
        environment = {**os.environ, "TORCH_EXTENSIONS_DIR": empty}
        subprocess.run([sys.executable, "-c", CHECK, *targets], env=environment, check=True)


def main(targets: list[str]) -> None:
    if not targets:
        raise SystemExit("usage: build_kernels.py MODULE:EXTENSION_ATTRIBUTE …")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # With no GPU at build time torch cannot pick architectures itself.
        raise SystemExit("set TORCH_CUDA_ARCH_LIST, e.g. '8.0;8.6;8.9;9.0+PTX'")
    destination = Path(sysconfig.get_paths()["platlib"])
    for target in targets:
        build(target, destination)
    check(targets)


if __name__ == "__main__":
    main(sys.argv[1:])
