"""The memory-bandwidth roofline of single-stream decoding, which `brandbot bench engine` compares to.

Decoding one token for one stream reads every weight once, so no engine can beat
`memory bandwidth ÷ bytes of weights read per token` tokens/s. Bytes per token come from the folder's
safetensors headers (the embedding table is only indexed, one row per token, so it does not count unless
the output head shares it); bandwidth comes from a table of known GPUs or from the operator.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# Peak memory bandwidth in GB/s (vendor data sheets), matched as a substring of torch's device name;
# the most specific name first.
GPU_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM
    ("B200", 8000.0),
    ("GH200", 4000.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100-SXM4-40GB", 1555.0),
    ("A100-PCIE-40GB", 1555.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A40", 696.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 6000 Ada", 960.0),
    ("RTX A6000", 768.0),
    ("RTX 5090", 1792.0),
    ("RTX 4090", 1008.0),
    ("RTX 4080", 717.0),
    ("RTX 3090 Ti", 1008.0),
    ("RTX 3090", 936.0),
    ("RTX 3080", 760.0),
)


def known_bandwidth_gbs(device_name: str) -> float | None:
    """Peak bandwidth of a GPU by torch's name for it (e.g. "NVIDIA H100 80GB HBM3"), or None if unknown."""
    for name, bandwidth in GPU_BANDWIDTH_GBS:
        if name.lower() in device_name.lower():
            return bandwidth
    return None


def weight_bytes_per_token(model_dir: Path) -> int:
    """Bytes of weights one decode step reads: every tensor in the folder but an untied embedding table."""
    tensors: dict[str, int] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with shard.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                start, end = entry["data_offsets"]
                tensors[name] = end - start
    if not tensors:
        raise ValueError(f"no safetensors weights in {model_dir}")
    has_head = any(name.startswith("lm_head.") for name in tensors)
    return sum(size for name, size in tensors.items() if not (has_head and "embed_tokens" in name))


def roofline_tokens_per_second(bandwidth_gbs: float, bytes_per_token: int) -> float:
    return bandwidth_gbs * 1e9 / bytes_per_token
