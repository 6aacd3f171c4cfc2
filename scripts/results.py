"""What the benchmark scripts share: the machine they ran on, and the generated tables
of the results page (docs/results/tables/, included by docs/results/index.md)."""

import os
import platform
import time
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "docs" / "results" / "tables"


def processor() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device | None = None) -> str:
    """The machine in words: the GPU if ``device`` is one, else the CPU and its threads."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({os.cpu_count()}-core host)"
    return f"{os.cpu_count()}-core {processor()}, {torch.get_num_threads()} threads"


def versions() -> str:
    return f"torch {torch.__version__}, pyro {pyro.__version__}"


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def append_row(table: Path, marker: str, row: str) -> None:
    """Insert ``row`` above the line ``marker`` of a generated table."""
    text = table.read_text()
    if marker not in text:
        raise SystemExit(f"{table} has no line {marker!r} to insert the row above")
    table.write_text(text.replace(marker, f"{row}\n{marker}"))
    print(f"row added to {table}")
