"""MP3 uploads encoded in the daemon's own process: LAME's frames behind a LAME/Info frame.

LAME (the lameenc wheel, LAME 3.100 linked in) encodes 16 kHz mono samples to MPEG-2 Layer III
frames. lameenc writes no header of its own, and without one a decoder keeps LAME's priming
samples: the server would hear every piece 69 ms late (bench/timing.py). So the frames go
behind a LAME/Info frame built here, laid out field for field as ffmpeg's mp3 muxer writes it
(libavformat/mp3enc.c: the Xing part with frames, bytes, a table of contents and a quality;
the LAME part with the encoder delay and padding and two CRC-16s), after the same empty ID3v2
tag. Servers decode these uploads as they decoded ffmpeg's: the frames are libmp3lame's but
for a few bytes of the last one, the table of contents is the CBR one (ffmpeg samples its own
frame positions: ±1/256), and ffmpeg decodes both to the same samples (tests/test_openai_upload.py).

Why in-process (bench/openai_encoder.py, 16 pieces of 60-90 s at once): one ffmpeg child per
piece peaked at ~230 MiB PSS for the tree and 2.2-2.4 s of CPU; LAME here, one piece at a
time, under 10 MiB and 1.1 s.

Pure and blocking (LAME holds the GIL for each second of audio it is fed): the engine runs
`encode_mp3` in a worker thread.
"""

from __future__ import annotations

import struct

import lameenc
import numpy as np

ENCODER_DELAY = 576  # LAME's priming samples; decoders add their own 529
LAME_QUALITY = 7  # lameenc's fastest (what ffmpeg's compression_level 9 gives LAME)
# LAME converts a call's whole input to float buffers first (~12 MB for a 90 s piece): fed a
# second at a time, it holds a few hundred KB
FEED_SAMPLES = 16000
TAG_CRC_SPAN = 190  # the LAME tag's CRC covers the frame's first 190 bytes (zeros past its end)
EMPTY_ID3V2 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)  # v2.4, 10 bytes of padding only

# MPEG-2 (LSF) Layer III: kbit/s by bitrate index, Hz by sample rate index
_BITRATES = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SAMPLE_RATES = (22050, 24000, 16000)
_SAMPLES_PER_FRAME = 576
_SIDE_INFO_MONO = 9
_XING_FLAGS = 0x0F  # frames, bytes, table of contents, quality
_TAG_BYTES = 4 + 4 + 4 + 4 + 100 + 4 + 36  # "Info", flags, frames, bytes, TOC, quality, LAME


def encode_mp3(audio: np.ndarray, *, bitrate: int, sample_rate: int) -> bytes:
    """16-bit mono samples → an mp3 whose decode starts with the first sample."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_out_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(LAME_QUALITY)
    samples = np.ascontiguousarray(audio, dtype="<i2")
    frames = bytearray()
    for start in range(0, len(samples), FEED_SAMPLES):
        frames += encoder.encode(samples[start : start + FEED_SAMPLES].tobytes())
    frames += encoder.flush()
    return EMPTY_ID3V2 + info_frame(bytes(frames), samples=len(samples)) + bytes(frames)


def info_frame(frames: bytes, *, samples: int) -> bytes:
    """The LAME/Info frame for `frames` (MPEG-2 Layer III, mono) that encode `samples`."""
    if not frames:
        raise ValueError("LAME gave no frames")
    header = frames[:4]
    count = frame_count(frames)
    if header[3] >> 6 != 3:
        raise ValueError("the LAME tag is laid out here for mono frames only")
    bitrate_index = header[2] >> 4
    rate = _SAMPLE_RATES[(header[2] >> 2) & 3]
    size = 0
    # the stream's own bitrate if the tag fits in such a frame, else the next that holds it
    while size < 4 + _SIDE_INFO_MONO + _TAG_BYTES:
        if bitrate_index >= len(_BITRATES):
            raise ValueError("no MPEG-2 frame can hold the LAME tag")
        size = 72_000 * _BITRATES[bitrate_index] // rate
        bitrate_index += 1
    bitrate_index -= 1
    frame_header = bytes(
        [header[0], header[1], (bitrate_index << 4) | (header[2] & 0x0C), header[3]]
    )
    total = size + len(frames)
    padding = count * _SAMPLES_PER_FRAME - ENCODER_DELAY - samples
    if not 0 <= padding < 4096:
        raise ValueError(f"the frames do not hold {samples} samples (padding {padding})")
    toc = bytes(min(255, 256 * percent // 100) for percent in range(100))  # CBR: linear
    lame = (
        b"Lavf lame"  # ffmpeg's bit-exact encoder string: decoders read the delay after it
        + bytes(2)  # revision and VBR method, lowpass
        + bytes(4 + 2 + 2)  # replay gain peak, radio and audiophile gain
        + bytes(2)  # encoding flags and ATH type, bitrate
        + ((ENCODER_DELAY << 12) | padding).to_bytes(3, "big")
        + bytes(1 + 1 + 2)  # misc, mp3 gain, preset and surround
        + struct.pack(">IH", total, crc16(frames))  # music length, music CRC
    )
    body = b"Info" + struct.pack(">III", _XING_FLAGS, count, total) + toc + bytes(4) + lame
    frame = bytearray(frame_header + bytes(_SIDE_INFO_MONO) + body + bytes(2))
    frame += bytes(size - len(frame))
    crc_at = 4 + _SIDE_INFO_MONO + len(body)
    frame[crc_at : crc_at + 2] = crc16(
        bytes(frame[:TAG_CRC_SPAN]).ljust(TAG_CRC_SPAN, b"\0")
    ).to_bytes(2, "big")
    return bytes(frame)


def frame_count(frames: bytes) -> int:
    """How many MPEG-2 Layer III frames `frames` holds, end to end (ValueError if it is not
    just such frames)."""
    count, at = 0, 0
    while at < len(frames):
        header = frames[at : at + 4]
        if len(header) < 4 or header[0] != 0xFF or (header[1] & 0xFE) != 0xF2:
            raise ValueError(f"not an MPEG-2 Layer III frame at byte {at}")
        bitrate, rate = _BITRATES[header[2] >> 4], _SAMPLE_RATES[(header[2] >> 2) & 3]
        at += 72_000 * bitrate // rate + ((header[2] >> 1) & 1)
        count += 1
    if at != len(frames):
        raise ValueError("the last frame is cut short")
    return count


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()
_CRC_BLOCK = 256


def _crc_bytes(crc: int, data: bytes) -> int:
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _shift_table(low_bit: int) -> tuple[int, ...]:
    """The register after _CRC_BLOCK zero bytes from each value of one of its bytes: the CRC is
    linear, so a register moves on as the xor of what its two bytes become."""
    basis = [_crc_bytes(1 << (low_bit + bit), bytes(_CRC_BLOCK)) for bit in range(8)]
    table = []
    for value in range(256):
        moved = 0
        for bit in range(8):
            if value >> bit & 1:
                moved ^= basis[bit]
        table.append(moved)
    return tuple(table)


_SHIFT_LOW, _SHIFT_HIGH = _shift_table(0), _shift_table(8)


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0x8005, reflected, no init or final xor), the LAME tag's.

    A byte at a time in Python is 54 ms for a 90 s piece's frames; here the frames are cut into
    256-byte blocks whose CRCs numpy runs side by side, then chained (the CRC so far moved on
    by a block of zeros, xor the block's own), in a few ms."""
    blocks = len(data) // _CRC_BLOCK
    if blocks < 8:
        return _crc_bytes(0, data)
    table = np.array(_CRC_TABLE, dtype=np.uint16)
    columns = np.frombuffer(data, dtype=np.uint8, count=blocks * _CRC_BLOCK).reshape(blocks, -1)
    state = np.zeros(blocks, dtype=np.uint16)
    for column in columns.T:
        state = (state >> 8) ^ table[(state ^ column) & 0xFF]
    crc = 0
    for block_crc in state.tolist():
        crc = _SHIFT_LOW[crc & 0xFF] ^ _SHIFT_HIGH[crc >> 8] ^ block_crc
    return _crc_bytes(crc, data[blocks * _CRC_BLOCK :])
