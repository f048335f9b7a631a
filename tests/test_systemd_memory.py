"""The unit's memory limit follows the embedded engine's worker count (0.6 GiB a worker plus
the daemon), as the unit and systemd/README.md state, and the install steps install ffmpeg."""

from __future__ import annotations

import re
from pathlib import Path

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
GIB = 1 << 30


def _bytes(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([KMG]?)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": GIB}[unit]


def _needed(workers: int) -> float:
    return (0.6 + 0.6 * workers) * GIB


def test_the_units_memory_max_fits_the_worker_count_it_names() -> None:
    """MemoryMax in transcribed.service covers the workers its comment says it fits, and
    MemoryHigh sits below MemoryMax."""
    unit = (SYSTEMD / "transcribed.service").read_text()
    workers = int(re.search(r"This unit's \S+ fits (\d+) workers", unit)[1])  # type: ignore[index]
    memory_max = _bytes(re.search(r"^MemoryMax=(\S+)$", unit, re.M)[1])  # type: ignore[index]
    memory_high = _bytes(re.search(r"^MemoryHigh=(\S+)$", unit, re.M)[1])  # type: ignore[index]
    assert memory_max >= _needed(workers) * 0.999
    assert memory_high < memory_max


def test_the_readme_table_follows_the_formula_and_install_steps_include_ffmpeg() -> None:
    """Every row of systemd/README.md's table gives at least 0.6 GiB + 0.6 GiB × workers, and
    the install steps install ffmpeg before anything else."""
    readme = (SYSTEMD / "README.md").read_text()
    rows = re.findall(r"^\| (\d+)[^|]* \| ([\d.]+[MG]) \| ([\d.]+[MG]) \|$", readme, re.M)
    assert len(rows) >= 4
    for workers, memory_max, memory_high in rows:
        assert _bytes(memory_max) >= _needed(int(workers)) * 0.999, workers
        assert _bytes(memory_high) < _bytes(memory_max)
    install = readme.split("## Install", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert install.strip().splitlines()[0].startswith("apt-get install ffmpeg")
