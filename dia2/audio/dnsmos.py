"""DNSMOS P.835: a speech clip's predicted quality, without a clean reference.

Microsoft's DNSMOS P.835 model (Reddy et al., "DNSMOS P.835: a non-intrusive perceptual objective
speech quality metric to evaluate noise suppressors", ICASSP 2022) predicts three mean opinion
scores from 1 to 5 as ITU-T P.835 listeners would give them: SIG (the speech itself: distortion),
BAK (the background: noise) and OVRL (the whole). The `speechmos` wheel ships the ONNX models;
this module loads `speechmos/dnsmos_models/sig_bak_ovr.onnx` from that package's folder and runs it
with onnxruntime itself (speechmos's own module imports librosa, which it does not declare and
which this project does not need: the P.835 model reads raw samples).

Scoring follows the reference implementation, microsoft/DNS-Challenge `DNSMOS/dnsmos_local.py`
(`ComputeScore.__call__` and `get_polyfit_val`): 16 kHz audio; a clip shorter than the model's
9.01 s input is repeated end to end until it is at least that long; the model scores 9.01 s
windows every second (int(floor(seconds) - 9.01) + 1 of them), each raw score is mapped through
the reference's calibration polynomial, and the clip's score is the mean over its windows.
One difference: the reference computes each window's end as int((i + 9.01) * 16000), which float
rounding puts one sample short for windows 7 to 23 (and 119 to 122), and it skips those; so on
clips longer than 16 s it ignores most of the audio past 16 s. Here every window counts. (On
clips up to 16 s, the two agree exactly.)

Cost: one model call per window, so a clip of S seconds (S >= 9.01) costs about S - 8 calls with
the reference's 1 s hop; `hop_seconds=INPUT_SECONDS` scores non-overlapping windows instead.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia2.audio.io import resample
from dia2.errors import Dia2Error

DNSMOS_RATE = 16000
INPUT_SECONDS = 9.01
"""The model's input length (seconds), as in the reference code."""
WINDOW_SAMPLES = int(INPUT_SECONDS * DNSMOS_RATE)
HOP_SECONDS = 1.0
"""The reference's hop between windows (seconds)."""
_BATCH_WINDOWS = 8  # windows per ONNX call: a little faster than one at a time, 4.6 MB of input
_MODEL = ("dnsmos_models", "sig_bak_ovr.onnx")
# The reference's calibration of the raw outputs to P.835 MOS (dnsmos_local.py, get_polyfit_val,
# is_personalized_MOS=False): np.poly1d coefficients, highest power first.
_SIG_POLY = (-0.08397278, 1.22083953, 0.0052439)
_BAK_POLY = (-0.13166888, 1.60915514, -0.39604546)
_OVRL_POLY = (-0.06766283, 1.11546468, 0.04602535)


class DnsmosError(Dia2Error, ValueError):
    """Audio DNSMOS cannot score, or its model missing; the message names it and the fix."""


@dataclass(frozen=True)
class DnsmosScore:
    """P.835 MOS predictions, 1 (bad) to 5 (excellent): SIG the speech, BAK the background
    (noise), OVRL the whole; `windows` is how many 9.01 s windows were averaged."""

    sig: float
    bak: float
    ovrl: float
    windows: int


class DnsmosScorer:
    """DNSMOS P.835 on CPU, its ONNX session loaded on first use."""

    def __init__(self, threads: int = 1, hop_seconds: float = HOP_SECONDS) -> None:
        if not 0 < hop_seconds <= INPUT_SECONDS:
            raise DnsmosError(f"the DNSMOS window hop {hop_seconds} s must lie in (0, {INPUT_SECONDS}] (the reference's is 1)")
        self.threads = threads
        self.hop_seconds = hop_seconds
        self._session = None

    def load(self):
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = self.threads
            self._session = onnxruntime.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])
        return self._session

    def score(self, waveform: np.ndarray, sample_rate: int) -> DnsmosScore:
        """Mono float waveform [S] at `sample_rate` -> its DNSMOS (resampled to 16 kHz first)."""
        audio = resample(np.asarray(waveform, dtype=np.float32), sample_rate, DNSMOS_RATE)
        if audio.size == 0 or not np.any(audio):
            raise DnsmosError("DNSMOS cannot score silence or empty audio: give a clip with sound in it")
        scores = self.score_windows(clip_windows(audio, self.hop_seconds))
        sig, bak, ovrl = scores.mean(axis=0)
        return DnsmosScore(float(sig), float(bak), float(ovrl), len(scores))

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """16 kHz windows [W, WINDOW_SAMPLES] (`clip_windows`) -> each one's calibrated SIG, BAK,
        OVRL [W, 3] (float64)."""
        session = self.load()
        batches = (windows[i : i + _BATCH_WINDOWS] for i in range(0, len(windows), _BATCH_WINDOWS))
        raw = np.concatenate([session.run(None, {"input_1": batch})[0] for batch in batches])  # [W, 3]: SIG, BAK, OVRL
        return np.stack([np.polyval(poly, raw[:, k].astype(np.float64)) for k, poly in enumerate((_SIG_POLY, _BAK_POLY, _OVRL_POLY))],
                        axis=1)


def clip_windows(audio: np.ndarray, hop_seconds: float = HOP_SECONDS) -> np.ndarray:
    """The reference's windows of a 16 kHz clip [S] (repeated end to end while it is shorter than
    one): [W, WINDOW_SAMPLES], float32."""
    while len(audio) < WINDOW_SAMPLES:
        audio = np.concatenate([audio, audio])
    count = int((np.floor(len(audio) / DNSMOS_RATE) - INPUT_SECONDS) / hop_seconds) + 1
    hop = int(hop_seconds * DNSMOS_RATE)
    starts = [i * hop for i in range(count) if i * hop + WINDOW_SAMPLES <= len(audio)]
    return np.stack([audio[s : s + WINDOW_SAMPLES] for s in starts]).astype(np.float32)


def model_path() -> Path:
    """The DNSMOS P.835 ONNX model inside the installed speechmos package (found without importing it)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise DnsmosError("the speechmos package (DNSMOS models) is not installed: pip install speechmos (a dia2-toolkit dependency)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MODEL)
    if not path.is_file():
        raise DnsmosError(f"DNSMOS model {path} is missing: reinstall speechmos (pip install --force-reinstall speechmos)")
    return path
