"""The speaker models at work: speech activity per voice in 10 s windows, one voiceprint per
voice and window, and one clustering of all voiceprints over the whole recording.

This module runs inside the diarization worker process (diarize_worker.py), never in the
daemon: it holds ONNX Runtime sessions. It is plain synchronous code, fed 16 kHz mono blocks as
they stream, so it can also be driven directly by a benchmark.

The method is pyannote's (community-1) with a simpler, bounded clustering:

1. The segmentation network looks at 10 s windows, side by side, and says, for each
   of 589 frames, which of up to three local voices speak (a hard multilabel decision).
2. For each local voice with at least MIN_EMBED_SECONDS of speech alone in a window, the
   embedding network (a WeSpeaker ResNet34) makes a 256-number voiceprint from Kaldi log-mel
   features of the window, weighted by that voice's frames.
3. After the last block, all voiceprints (a few thousand for hours of audio: 1 KiB each) are
   clustered together, so a person keeps one identity across the whole recording. Average
   linkage on cosine distance, cut at CLUSTER_THRESHOLD; clusters with too little speech are
   folded into the nearest large one. Past MAX_CLUSTERED voiceprints, an even subsample is
   clustered and the rest join the nearest centroid, so memory stays bounded.
4. Every window's local voices take their cluster's label; overlapping windows vote frame by
   frame; runs of one label become turns.

Memory: one window of audio, the voiceprints (1 KiB each) and each window's masks (1.7 KiB),
about 1 MiB per hour of audio.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 10.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
WINDOW_STEP = (
    10.0  # windows side by side: half the cost of 5 s steps for +1.3 points of DER (bench)
)
STEP_SAMPLES = int(WINDOW_STEP * SAMPLE_RATE)
FRAMES_PER_WINDOW = 589
FRAME_STEP = 0.016875  # the segmentation network's receptive field step
FRAME_DURATION = 0.0619375
MIN_EMBED_SECONDS = 1.0
EMBED_SECONDS = 3.0  # the longest stretch of one voice in one window that a voiceprint looks at
CLUSTER_THRESHOLD = 0.6  # cosine distance at which average linkage stops merging
MIN_CLUSTER_SECONDS = 4.0
MAX_CLUSTERED = 3000
MIN_TURN_GAP = 0.5  # a pause shorter than this inside one speaker's speech does not end a turn


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    start: float
    end: float
    speaker: int  # from Diarizer.finish: numbered in order of first appearance


# ---------------------------------------------------------------- features


def _mel_banks(num_bins: int = 80, fft_size: int = 512) -> np.ndarray:
    """Kaldi's triangular mel filters (low 20 Hz, high Nyquist) over fft_size/2 bins."""

    def mel(freq: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(freq) / 700.0)

    low, high = mel(20.0), mel(SAMPLE_RATE / 2)
    delta = (high - low) / (num_bins + 1)
    bins = mel(np.arange(fft_size // 2) * SAMPLE_RATE / fft_size)
    left = low + np.arange(num_bins)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    up = (bins[None, :] - left) / (center - left)
    down = (right - bins[None, :]) / (right - center)
    weights = np.where((bins > left) & (bins < right), np.minimum(up, down), 0.0)
    return np.maximum(weights, 0.0).astype(np.float32)


_MEL = _mel_banks()
_FRAME, _SHIFT, _FFT = 400, 160, 512
_HAMMING = (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(_FRAME) / (_FRAME - 1))).astype(np.float32)


def fbank(samples: np.ndarray) -> np.ndarray:
    """Kaldi log-mel filterbank (80 bins, 25/10 ms, hamming, no dither, snip edges), with the
    mean over time removed: what the embedding network was trained on. samples: float in
    [-1, 1]. Returns (frames, 80) float32."""
    count = 1 + (len(samples) - _FRAME) // _SHIFT
    if count < 1:
        return np.zeros((0, 80), np.float32)
    scaled = samples.astype(np.float32) * 32768.0
    index = np.arange(_FRAME)[None, :] + _SHIFT * np.arange(count)[:, None]
    frames = scaled[index]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1]
    frames[:, 0] -= 0.97 * frames[:, 0]
    frames *= _HAMMING
    power = np.abs(np.fft.rfft(frames, n=_FFT, axis=1)[:, : _FFT // 2]) ** 2
    features = np.log(np.maximum(power.astype(np.float32) @ _MEL.T, np.finfo(np.float32).eps))
    return np.asarray(features - features.mean(axis=0, keepdims=True), dtype=np.float32)


# ---------------------------------------------------------------- models


class SpeakerModels:
    """The two ONNX sessions, single-threaded (the transcription workers have the cores)."""

    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._segmentation = onnxruntime.InferenceSession(
            str(model_dir / "segmentation.ort"), options, providers=providers
        )
        self._embedding = onnxruntime.InferenceSession(
            str(model_dir / "embedding.ort"), options, providers=providers
        )

    def segment(self, window: np.ndarray) -> np.ndarray:
        """(589, 3) 0/1 activity of up to three local voices in one 10 s window."""
        output = self._segmentation.run(None, {"waveforms": window[None, None, :]})[0]
        return np.asarray(output[0] > 0.5, dtype=np.uint8)

    def embed(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(n, 256) voiceprints of one window's features under n frame-weight masks."""
        batch = np.broadcast_to(features, (len(weights), *features.shape))
        output = self._embedding.run(
            None,
            {
                "fbank": np.ascontiguousarray(batch, dtype=np.float32),
                "weights": np.ascontiguousarray(weights, dtype=np.float32),
            },
        )[0]
        return np.asarray(output, dtype=np.float32)

    def voiceprint(self, samples: np.ndarray) -> tuple[np.ndarray | None, float]:
        """One voiceprint for a clip of one person (a reference clip) from its speech frames,
        and how many seconds of speech the segmentation heard in it; no voiceprint when that
        is less than MIN_EMBED_SECONDS."""
        prints: list[np.ndarray] = []
        seconds: list[float] = []
        for start in range(0, max(1, len(samples) - WINDOW_SAMPLES // 2), WINDOW_SAMPLES):
            window = samples[start : start + WINDOW_SAMPLES]
            activity = self.segment(_padded(window)).max(axis=1)
            speech = float(activity.sum()) * FRAME_STEP
            if speech < MIN_EMBED_SECONDS:
                continue
            # features of the real samples only: padding would skew the mean removed from them
            features = fbank(window)
            weights = _frame_weights(activity, len(features))
            prints.append(_normalise(self.embed(features, weights[None, :])[0]))
            seconds.append(speech)
        if not prints:
            return None, sum(seconds)
        vector = _normalise(np.average(np.stack(prints), axis=0, weights=seconds))
        return vector.astype(np.float32), sum(seconds)


def _padded(window: np.ndarray) -> np.ndarray:
    if len(window) == WINDOW_SAMPLES:
        return np.ascontiguousarray(window, dtype=np.float32)
    out = np.zeros(WINDOW_SAMPLES, np.float32)
    out[: len(window)] = window
    return out


def _frame_weights(activity: np.ndarray, feature_frames: int) -> np.ndarray:
    """Segmentation frames (589 per window) → feature frames (100 a second), nearest frame."""
    centers = (np.arange(feature_frames) * 0.010 + 0.0125 - FRAME_DURATION / 2) / FRAME_STEP
    index = np.clip(np.round(centers).astype(int), 0, len(activity) - 1)
    return np.asarray(activity[index], dtype=np.float32)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-9))


# ---------------------------------------------------------------- the streaming diarizer


class Diarizer:
    """Feed 16 kHz mono float blocks with feed(); finish() returns the speaker turns."""

    def __init__(self, models: SpeakerModels) -> None:
        self._models = models
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # sample index of the buffer's first sample
        self._total = 0
        self._masks: list[np.ndarray] = []  # per window: (589, 3) uint8
        self._prints: list[np.ndarray] = []
        self._owners: list[tuple[int, int, float]] = []  # (window, local voice, seconds alone)

    @property
    def seconds(self) -> float:
        return self._total / SAMPLE_RATE

    def feed(self, block: np.ndarray) -> None:
        self._total += len(block)
        self._buffer = np.concatenate([self._buffer, np.asarray(block, np.float32)])
        while len(self._buffer) >= WINDOW_SAMPLES:
            self._window(self._buffer[:WINDOW_SAMPLES])
            self._buffer = self._buffer[STEP_SAMPLES:]
            self._buffer_start += STEP_SAMPLES

    def _window(self, window: np.ndarray) -> None:
        index = len(self._masks)
        masks = self._models.segment(_padded(window))
        self._masks.append(masks)
        alone = masks * (masks.sum(axis=1, keepdims=True) == 1)
        voices = [
            k for k in range(masks.shape[1]) if alone[:, k].sum() * FRAME_STEP >= MIN_EMBED_SECONDS
        ]
        if not voices:
            return
        features = fbank(window)
        for voice in voices:
            weights = _frame_weights(alone[:, voice], len(features))
            # The network's cost grows with the frames it sees: look at the EMBED_SECONDS
            # where this voice speaks alone the most, not the whole window.
            span = min(len(weights), round(EMBED_SECONDS * 100))
            totals = np.convolve(weights, np.ones(span, np.float32), mode="valid")
            first = int(totals.argmax())
            crop = slice(first, first + span)
            vector = self._models.embed(features[crop], weights[None, crop])[0]
            self._prints.append(vector)
            self._owners.append((index, voice, float(alone[:, voice].sum()) * FRAME_STEP))

    def finish(self) -> tuple[list[Turn], np.ndarray]:
        """The turns, and each speaker's centroid voiceprint (rows, by speaker index)."""
        # the tail: one more window over what is left (padded), unless the last window saw it
        if len(self._buffer) > (WINDOW_SAMPLES - STEP_SAMPLES) or not self._masks:
            if len(self._buffer):
                self._window(self._buffer)
        labels, centroids = cluster(
            np.array(self._prints).reshape(-1, 256), [o[2] for o in self._owners]
        )
        turns = self._turns(labels, len(centroids))
        # speakers are numbered in order of first appearance; their centroids follow suit
        order = list(dict.fromkeys(turn.speaker for turn in turns))
        number = {cluster_index: rank for rank, cluster_index in enumerate(order)}
        renumbered = [Turn(start=t.start, end=t.end, speaker=number[t.speaker]) for t in turns]
        return renumbered, centroids[order].reshape(-1, centroids.shape[1])

    def _turns(self, labels: np.ndarray, speakers: int) -> list[Turn]:
        frames_total = int(self.seconds / FRAME_STEP) + FRAMES_PER_WINDOW
        if speakers == 0 or not self._masks:
            return []
        votes = np.zeros((frames_total, speakers), np.float32)
        coverage = np.zeros(frames_total, np.float32)
        speech = np.zeros(frames_total, np.float32)
        local_label: dict[tuple[int, int], int] = {
            (window, voice): int(label)
            for (window, voice, _), label in zip(self._owners, labels, strict=True)
        }
        for window, masks in enumerate(self._masks):
            first = round(window * WINDOW_STEP / FRAME_STEP)
            span = slice(first, first + FRAMES_PER_WINDOW)
            width = len(votes[span])
            coverage[span] += 1
            speech[span] += masks.max(axis=1)[:width]
            for voice in range(masks.shape[1]):
                label = local_label.get((window, voice))
                if label is not None:
                    votes[span, label] += masks[:width, voice]
        active = speech >= 0.5 * np.maximum(coverage, 1)
        best = votes.argmax(axis=1)
        has_vote = votes.max(axis=1) > 0
        # speech heard by no embedded voice (too short alone) takes the nearest labelled frame
        frame_label = np.where(active & has_vote, best, -1)
        frame_label = _fill_from_neighbours(frame_label, active)
        limit = int(self.seconds / FRAME_STEP)
        frame_label = frame_label[:limit]
        return _runs_to_turns(frame_label)


def _fill_from_neighbours(labels: np.ndarray, active: np.ndarray) -> np.ndarray:
    known = np.flatnonzero(labels >= 0)
    if len(known) == 0:
        return labels
    missing = np.flatnonzero(active[: len(labels)] & (labels < 0))
    if len(missing):
        position = np.clip(np.searchsorted(known, missing), 1, len(known) - 1)
        left, right = known[position - 1], known[position]
        nearest = np.where(missing - left <= right - missing, left, right)
        labels = labels.copy()
        labels[missing] = labels[nearest]
    return labels


def _runs_to_turns(frame_label: np.ndarray) -> list[Turn]:
    turns: list[Turn] = []
    change = np.flatnonzero(np.diff(frame_label, prepend=-2, append=-2) != 0)
    for begin, end in itertools.pairwise(change):
        label = int(frame_label[begin])
        if label < 0:
            continue
        start = begin * FRAME_STEP + FRAME_DURATION / 2
        stop = end * FRAME_STEP + FRAME_DURATION / 2
        if turns and turns[-1].speaker == label and start - turns[-1].end < MIN_TURN_GAP:
            turns[-1] = Turn(start=turns[-1].start, end=stop, speaker=label)
        else:
            turns.append(Turn(start=start, end=stop, speaker=label))
    return turns


# ---------------------------------------------------------------- clustering


def cluster(prints: np.ndarray, seconds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Labels for every voiceprint (0..n-1) and the n centroids (unit vectors)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(prints) == 0:
        return np.zeros(0, int), np.zeros((0, 256), np.float32)
    unit = _normalise(prints.astype(np.float64))
    weight = np.asarray(seconds, np.float64)
    if len(unit) == 1:
        return np.zeros(1, int), unit.astype(np.float32)
    sample = np.arange(len(unit))
    if len(unit) > MAX_CLUSTERED:
        sample = np.linspace(0, len(unit) - 1, MAX_CLUSTERED).round().astype(int)
    tree = linkage(unit[sample], method="average", metric="cosine")
    sample_labels = fcluster(tree, t=CLUSTER_THRESHOLD, criterion="distance") - 1
    centroids = np.stack(
        [unit[sample][sample_labels == c].mean(axis=0) for c in range(sample_labels.max() + 1)]
    )
    labels = (unit @ _normalise(centroids).T).argmax(axis=1)
    # fold clusters with too little speech into the nearest large one, then re-assign once
    for _ in range(2):
        talk = np.bincount(labels, weights=weight, minlength=len(centroids))
        large = np.flatnonzero(talk >= MIN_CLUSTER_SECONDS)
        if len(large) == 0:
            large = np.array([int(talk.argmax())])
        centroids = _normalise(np.stack([unit[labels == c].mean(axis=0) for c in large]))
        labels = (unit @ centroids.T).argmax(axis=1)
    return labels, centroids.astype(np.float32)
