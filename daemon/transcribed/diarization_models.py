"""Where the speaker models live, how they get there, and the check that they are the right ones.

The models are pyannote's "speaker-diarization-community-1" segmentation and embedding networks
(CC-BY-4.0, pyannoteAI), in ONNX Runtime's .ort form as converted by Moonshine AI. They are
compiled into the library of the `moonshine-voice==0.0.73` wheel on PyPI (later releases
download them at run time instead, which this daemon never does). The project pins
moonshine-voice 0.1.5 for transcription, and one venv cannot hold two versions of a
distribution, so set-up fetches the 0.0.73 wheel as a file (pinned, sha256-checked), reads the
two byte arrays out of its library's symbol table (without loading it), checks their sha256, and writes them to MODEL_DIR:

    python -m transcribed.diarization_models install [MODEL_DIR]

The daemon only ever reads MODEL_DIR (default: share/transcribed/diarization-community1 under
the venv) and checks both files' sha256 before a worker loads them.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "moonshine-voice==0.0.73"
WHEEL_FILE = "moonshine_voice-0.0.73-py3-none-manylinux_2_34_x86_64.whl"
WHEEL_SHA256 = "6461c8097ed78d054c46b4c821143008a07b5fa1f4169674493ccfa06c1407db"

MODEL_SHA256 = {
    "segmentation.ort": "9715e3996ef181252aa1cc0c9398060f42b2c984c2fb65e3604262555e2efb1a",
    "embedding.ort": "6e4af7d49562e6e7042672e444d6394935cb2c23c3a7dd4919da45922b91735b",
}
_SYMBOL_PREFIX = "_ZN9cppannote19embedded_community1"
_ARRAYS = {"segmentation.ort": "segmentation_ort_data", "embedding.ort": "embedding_ort_data"}


def default_model_dir() -> Path:
    return Path(sys.prefix) / "share" / "transcribed" / "diarization-community1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_dir(model_dir: Path) -> str | None:
    """None when both model files are there with the expected checksums, else what is wrong."""
    for name, expected in MODEL_SHA256.items():
        path = model_dir / name
        if not path.is_file():
            return f"the speaker model {path} is missing"
        if _sha256(path) != expected:
            return f"the speaker model {path} is not the expected file (sha256 mismatch)"
    return None


def _mangled(name: str) -> str:
    return f"{_SYMBOL_PREFIX}{len(name)}{name}E"


def _elf_symbols(image: bytes, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """(file offset, size) of each wanted dynamic symbol of a little-endian ELF64 image."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF library")
    (section_offset,) = struct.unpack_from("<Q", image, 0x28)
    entry_size, count = struct.unpack_from("<HH", image, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", image, section_offset + index * entry_size)
        for index in range(count)
    ]
    found: dict[str, tuple[int, int]] = {}
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, symbol_size in sections:
        if kind != 11:  # SHT_DYNSYM
            continue
        strings_offset = sections[link][4]
        for position in range(offset, offset + size, symbol_size):
            name_index, _, _, _, value, length = struct.unpack_from("<IBBHQQ", image, position)
            end = image.index(b"\0", strings_offset + name_index)
            name = image[strings_offset + name_index : end].decode()
            if name not in wanted:
                continue
            for _n, _k, _f, address, file_offset, extent, *_ in sections:
                if address and address <= value < address + extent:
                    found[name] = (file_offset + value - address, length)
    return found


def _read_arrays(library: Path) -> dict[str, bytes]:
    """The model files compiled into the library, read from its symbol table (not loaded)."""
    image = library.read_bytes()
    wanted = {_mangled(symbol) for symbol in _ARRAYS.values()}
    symbols = _elf_symbols(image, wanted | {_mangled(s + "_size") for s in _ARRAYS.values()})
    arrays = {}
    for file_name, symbol in _ARRAYS.items():
        size_offset, _ = symbols[_mangled(symbol + "_size")]
        (size,) = struct.unpack_from("<Q", image, size_offset)
        offset, _ = symbols[_mangled(symbol)]
        arrays[file_name] = image[offset : offset + size]
    return arrays


def install(model_dir: Path) -> None:
    if check_model_dir(model_dir) is None:
        print(f"speaker models already in {model_dir}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "req.txt").write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "--only-binary",
                ":all:",
                "-r",
                str(folder / "req.txt"),
                "-d",
                str(folder),
            ],
            check=True,
        )
        wheel = folder / WHEEL_FILE
        if _sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 mismatch")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("moonshine_voice/libmoonshine.so", folder)
        arrays = _read_arrays(folder / "moonshine_voice/libmoonshine.so")
        model_dir.mkdir(parents=True, exist_ok=True)
        for name, data in arrays.items():
            if hashlib.sha256(data).hexdigest() != MODEL_SHA256[name]:
                raise SystemExit(f"{name} read from {WHEEL_FILE}: sha256 mismatch")
            (model_dir / name).write_bytes(data)
    problem = check_model_dir(model_dir)
    if problem:
        raise SystemExit(problem)
    print(f"speaker models installed in {model_dir}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "install":
        print(__doc__)
        return 2
    install(Path(argv[2]) if len(argv) > 2 else default_model_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
