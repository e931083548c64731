"""DNSMOS P.835 (dia2.audio.dnsmos) and the prep quality filter (data_prep.quality): the reference
code's scores, its windows for short and long clips, and a 0 dB SNR cut dropped by the default
--min-dnsmos while its clean twin is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.quality import LOW_QUALITY, QualityConfig, QualityError, check_quality, quality_scorer
from dia2.audio.dnsmos import DnsmosError, DnsmosScorer, clip_windows

# Scores of the fixture clips by the reference algorithm (microsoft/DNS-Challenge dnsmos_local.py,
# as speechmos 0.0.1.1 implements it with librosa, on the same 16 kHz samples), taken once.
REFERENCE = {"clean.wav": (3.2193, 3.9179, 2.9109), "noisy.wav": (2.7236, 1.4159, 1.5081)}


@pytest.fixture(scope="module")
def scorer() -> DnsmosScorer:
    return DnsmosScorer()


def _read(recordings, name: str) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(Path(recordings["folder"]) / name), dtype="float32")
    return audio, rate


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_scores_match_the_reference_code(scorer, recordings, name):
    score = scorer.score(*_read(recordings, name))
    assert (score.sig, score.bak, score.ovrl) == pytest.approx(REFERENCE[name], abs=2e-3)
    assert score.windows == 4  # 6.6 s, repeated to 13.1 s: int(13 - 9.01) + 1 windows


def test_the_noisy_twin_is_dropped_and_the_clean_one_kept(recordings):
    config = QualityConfig()
    scorer = quality_scorer(config)  # what prep scores with: non-overlapping windows
    clean, noisy = (check_quality(*_read(recordings, name), scorer, config) for name in ("clean.wav", "noisy.wav"))
    assert clean.score.windows == noisy.score.windows == 1
    assert clean.reason is None and clean.score.ovrl > config.min_dnsmos
    assert noisy.reason.startswith(LOW_QUALITY) and noisy.score.ovrl < config.min_dnsmos
    assert noisy.score.bak < clean.score.bak - 2  # the noise is heard as background, as P.835 means it
    for name, check in (("clean.wav", clean), ("noisy.wav", noisy)):  # within 0.07 of the reference's 1 s hop
        assert check.score.ovrl == pytest.approx(REFERENCE[name][2], abs=0.07)


def test_windows_follow_the_reference_for_short_and_long_clips():
    rate = 16000
    short = np.arange(int(2.5 * rate), dtype=np.float32)
    windows = clip_windows(short, 1.0)  # repeated end to end to 10 s: one window, the clip four times over
    assert windows.shape == (1, 144160)
    np.testing.assert_array_equal(windows[0, : len(short)], short)
    np.testing.assert_array_equal(windows[0, len(short) : 2 * len(short)], short)
    long = np.arange(int(30.5 * rate), dtype=np.float32)
    windows = clip_windows(long, 1.0)
    assert windows.shape == (int(30 - 9.01) + 1, 144160)  # every second (the reference skips 7-20, a float slip)
    assert windows[-1, 0] == 20 * rate
    assert clip_windows(long, 9.01).shape == (3, 144160)


def test_a_resampled_clip_scores_alike(scorer, recordings):
    from dia2.audio.io import resample

    audio, rate = _read(recordings, "clean.wav")
    first = audio[: int(2.5 * rate)]  # one window
    at_16k, at_48k = scorer.score(first, rate), scorer.score(resample(first, rate, 48000), 48000)
    assert at_48k.ovrl == pytest.approx(at_16k.ovrl, abs=0.05) and at_48k.windows == at_16k.windows == 1


def test_silence_and_bad_settings_are_refused(scorer):
    with pytest.raises(DnsmosError, match="silence or empty audio"):
        scorer.score(np.zeros(16000, np.float32), 16000)
    with pytest.raises(DnsmosError, match="window hop"):
        DnsmosScorer(hop_seconds=0)
    with pytest.raises(QualityError, match="lowest DNSMOS 6"):
        QualityConfig(min_dnsmos=6)
    with pytest.raises(QualityError, match="DNSMOS hop 10"):
        QualityConfig(dnsmos_hop=10)
