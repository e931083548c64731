"""Loudness: measure a cut's integrated loudness and bring it to a target, never past a true-peak ceiling.

Integrated loudness is ITU-R BS.1770-4 (K-weighting, 400 ms blocks, the -70 LUFS absolute and -10 LU
relative gates), measured by pyloudnorm. The target defaults to -23 LUFS (EBU R 128). A gain that
would push a peak past the ceiling (-1 dBTP, EBU R 128's limit for true peaks) is limited, not
clipped: the true peak is measured on the signal oversampled 4x (BS.1770-4 Annex 2), and a gain
curve that looks ahead of each peak lowers only the few milliseconds around it, so the loudness
of the speech stays on target.

Shapes: C channels, S samples; a waveform is [S] (mono) or [C, S].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from dia2.audio.io import CLIP_LEVEL
from dia2.errors import Dia2Error

logger = logging.getLogger(__name__)

TRUE_PEAK_OVERSAMPLING = 4
"""BS.1770-4 Annex 2 measures true peak on the signal oversampled 4x (at 48 kHz; more at lower rates
would find slightly higher peaks: the -1 dBTP ceiling leaves room for that)."""
_BLOCK_SECONDS = 0.4  # BS.1770 gating block
_LOOKAHEAD_SECONDS = 0.005  # the limiter starts lowering the gain this long before a peak
_HOLD_SECONDS = 0.05  # ... and holds it this long after, so a burst of peaks is one dip, not a buzz


class LoudnessError(Dia2Error, ValueError):
    """A loudness setting or input that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class LoudnessConfig:
    """Loudness: each cut brought to one integrated loudness (ITU-R BS.1770-4), true peaks limited so nothing clips."""

    loudness: bool = True
    """Normalise each cut's loudness (--no-loudness keeps the levels as recorded); the gain is recorded per row."""
    target_lufs: float = -23.0
    """Integrated loudness every cut is brought to (LUFS, ITU-R BS.1770-4; -23 is EBU R 128's target)."""
    ceiling_dbtp: float = -1.0
    """Highest true peak (dBTP, 4x oversampled) the normalised audio may reach: louder peaks are limited."""
    quiet_lufs: float = -35.0
    """A recording quieter than this (LUFS) is reported as very quiet: its gain lifts its noise too."""
    max_gain_db: float = 20.0
    """A cut that needs more gain than this (dB) is reported (a recording made far from the microphone)."""

    def __post_init__(self) -> None:
        for name, value in (("target", self.target_lufs), ("ceiling", self.ceiling_dbtp), ("quiet level", self.quiet_lufs),
                            ("largest gain", self.max_gain_db)):
            if not math.isfinite(value):
                raise LoudnessError(f"the loudness {name} must be a finite number, got {value}")
        if self.target_lufs >= 0:
            raise LoudnessError(
                f"the loudness target {self.target_lufs:g} LUFS is not below 0 LUFS (full scale): give a negative "
                "target such as -23 (EBU R 128) or -16 (podcasts)"
            )
        if self.ceiling_dbtp > 0:
            raise LoudnessError(f"the true-peak ceiling {self.ceiling_dbtp:g} dBTP is above full scale: give 0 or less, such as -1")
        if self.target_lufs > self.ceiling_dbtp:
            raise LoudnessError(
                f"the loudness target {self.target_lufs:g} LUFS is above the true-peak ceiling {self.ceiling_dbtp:g} dBTP: "
                "no speech fits; give a lower target"
            )


@dataclass(frozen=True)
class LoudnessResult:
    """A normalised cut: `waveform` (the input's shape), the loudness in and out (LUFS; -inf when
    silent), the static gain applied (dB), the most the limiter took off on top (dB, 0 when it
    did nothing), the output's true peak (dBTP), and what the QC report flags about the input:
    `quiet` (below `quiet_lufs`, or silent), `excess_gain` (more than `max_gain_db`), and the
    share of its samples at full scale (`is_clipped` compares it with --max-clipped)."""

    waveform: np.ndarray
    input_lufs: float
    output_lufs: float
    gain_db: float
    limited_db: float
    true_peak_dbtp: float
    quiet: bool
    excess_gain: bool
    clipped_fraction: float

    def is_clipped(self, max_clipped: float) -> bool:
        """More than `max_clipped` (prep's --max-clipped) of the input's samples at full scale (CLIP_LEVEL)."""
        return self.clipped_fraction > max_clipped


def integrated_loudness(waveform: np.ndarray, sample_rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness (LUFS) of [S] or [C, S]; -inf for silence. Audio shorter
    than one 400 ms block is measured as one block of its own length."""
    import pyloudnorm

    data = np.atleast_2d(np.asarray(waveform, dtype=np.float64)).T  # pyloudnorm's layout: [S, C]
    if data.shape[0] == 0:
        raise LoudnessError("cannot measure the loudness of empty audio: give at least one sample")
    block = min(_BLOCK_SECONDS, data.shape[0] / sample_rate)
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sample_rate, block_size=block).integrated_loudness(data))


def true_peak(waveform: np.ndarray, sample_rate: int) -> float:
    """Largest magnitude of [S] or [C, S] oversampled 4x (BS.1770-4 Annex 2), linear (1.0 = 0 dBTP)."""
    return float(_true_peak_envelope(np.atleast_2d(waveform)).max(initial=0.0))


def normalize_loudness(waveform: np.ndarray, sample_rate: int, config: LoudnessConfig = LoudnessConfig()) -> LoudnessResult:
    """Bring [S] or [C, S] to `config.target_lufs` with the true peak at most `config.ceiling_dbtp`.

    Silent audio (no block above the -70 LUFS gate) is returned unchanged with a gain of 0 dB.
    """
    audio = np.atleast_2d(np.asarray(waveform, dtype=np.float32))
    clipped = float((np.abs(audio) >= CLIP_LEVEL).mean()) if audio.size else 0.0
    loudness = integrated_loudness(audio, sample_rate)
    if not math.isfinite(loudness):
        peak = true_peak(audio, sample_rate)
        return LoudnessResult(np.asarray(waveform, np.float32).copy(), loudness, loudness, 0.0, 0.0,
                              _db(peak), quiet=True, excess_gain=False, clipped_fraction=clipped)
    gain_db = config.target_lufs - loudness
    gained = audio * np.float32(10 ** (gain_db / 20))
    limited, reduction, peak = _limit(gained, sample_rate, 10 ** (config.ceiling_dbtp / 20))
    out = limited[0] if np.ndim(waveform) == 1 else limited
    if reduction > 0:
        logger.debug("limited true peaks by up to %.1f dB to stay under %.1f dBTP", reduction, config.ceiling_dbtp)
    return LoudnessResult(
        out, loudness, integrated_loudness(limited, sample_rate), gain_db, reduction, _db(peak),
        quiet=loudness < config.quiet_lufs, excess_gain=gain_db > config.max_gain_db, clipped_fraction=clipped,
    )


def _limit(audio: np.ndarray, sample_rate: int, ceiling: float) -> tuple[np.ndarray, float, float]:
    """[C, S] with every true peak at most `ceiling` (linear), the largest gain reduction (dB), and
    the true peak of the result (linear).

    The gain each sample needs is min(1, ceiling / its true-peak envelope). A minimum over a window
    from HOLD before to LOOKAHEAD after each sample, then a moving average LOOKAHEAD wide, gives a
    smooth curve that never exceeds the needed gain anywhere (every sample the average covers has
    the sample it is for inside its minimum's window), so no peak gets through and the gain ramps
    over milliseconds instead of jumping.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    envelope = _true_peak_envelope(audio)
    if envelope.max(initial=0.0) <= ceiling:
        return audio, 0.0, float(envelope.max(initial=0.0))
    need = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    ahead = max(1, round(_LOOKAHEAD_SECONDS * sample_rate))
    hold = max(ahead, round(_HOLD_SECONDS * sample_rate))
    size = ahead + hold + 1
    # scipy centres a window of `size` on each sample and shifts it back by `origin`: it then spans [i - hold, i + ahead].
    floor = minimum_filter1d(need, size=size, origin=hold - size // 2, mode="nearest")
    gain = np.minimum(uniform_filter1d(floor, size=ahead, mode="nearest"), need)
    limited = (audio * gain[None, :]).astype(np.float32)
    # Scaling between samples moves the interpolated peaks a little: a last static trim catches that.
    peak = true_peak(limited, sample_rate)
    if peak > ceiling:
        limited *= np.float32(ceiling / peak)
        gain *= ceiling / peak
        peak = true_peak(limited, sample_rate)
    return limited, -_db(float(gain.min())), peak


def _true_peak_envelope(audio: np.ndarray) -> np.ndarray:
    """Per sample [S]: the largest magnitude over the channels and the 4 oversampled points from it
    to the next sample."""
    from scipy.signal import resample_poly

    if audio.shape[1] == 0:
        return np.zeros(0, np.float32)
    up = np.abs(resample_poly(audio.astype(np.float64), TRUE_PEAK_OVERSAMPLING, 1, axis=1))
    frames = up[:, : audio.shape[1] * TRUE_PEAK_OVERSAMPLING].reshape(audio.shape[0], audio.shape[1], TRUE_PEAK_OVERSAMPLING)
    return np.maximum(frames.max(axis=(0, 2)), np.abs(audio).max(axis=0))


def _db(level: float) -> float:
    return 20 * math.log10(level) if level > 0 else -math.inf
