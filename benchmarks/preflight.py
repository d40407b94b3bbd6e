"""What the GPU checks will run on: one line, and ``--json FILE`` with the details.

The card and its driver, torch / torchvision / timm, whether triton (``torch.compile``'s
GPU code generator) and a C compiler (which inductor needs) are present, and whether an
NVIDIA MPS control daemon is running (without MPS, processes sharing one GPU take turns).
Needs torch, timm and torchvision only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision


def _driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        found = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout else None


def checked_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` as a device, or one line (``parser.error``) where it cannot be used."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"argument --device: expected cpu, cuda or cuda:N, but got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for, but torch sees no CUDA device")
    return device


def mps_running() -> bool:
    """Whether an MPS control daemon answers at its pipe (``CUDA_MPS_PIPE_DIRECTORY``)."""
    pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    return (pipes / "control").exists()


def machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cuda": cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "devices": torch.cuda.device_count() if cuda else 0,
        "driver": _driver(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "triton": importlib.util.find_spec("triton") is not None,
        "c_compiler": next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None),
        "mps": mps_running(),
    }


def line(info: dict[str, Any]) -> str:
    where = (
        f"{info['device']} x {info['devices']}, driver {info['driver'] or '?'}"
        if info["cuda"]
        else "no GPU (torch sees no CUDA device)"
    )
    return (
        f"{where}; torch {info['torch']} (CUDA {info['cuda_runtime'] or '-'}), torchvision "
        f"{info['torchvision']}, timm {info['timm']}; triton {'yes' if info['triton'] else 'no'}, "
        f"C compiler {info['c_compiler'] or 'none'}, MPS {'running' if info['mps'] else 'not running'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preflight.py", description=__doc__)
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the details here")
    args = parser.parse_args(argv)
    info = machine()
    print(line(info))
    if args.json is not None:
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
