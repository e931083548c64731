"""Audio and recognisers with known answers: tones and a speech-like hum, and transcribers that
hear scripted words or name each tone burst by its pitch."""

import numpy as np

from dia2.text.words import SpokenWord


def sine(seconds, rate, freq=440.0, level=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class ScriptedTranscriber:
    """Returns fixed words per call (an injected transcriber)."""

    def __init__(self, *calls):
        self.calls = list(calls)
        self.seen = []

    def transcribe(self, waveform, sample_rate):
        self.seen.append((len(waveform), sample_rate))
        return self.calls.pop(0)


def speech_like(seconds, rate=24000, seed=0):
    """A 220 Hz hum with a random level that changes every sample: `seconds` of audio a codec encodes like a voice."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.random.default_rng(seed).uniform(0.5, 1, t.shape)).astype(np.float32)


class ToneTranscriber:
    """Hears each tone burst as a word named after its frequency; a pause > 0.8 s ends a segment.

    Partial bursts at the window's edges are heard too, so a chunk cut through a word yields a
    wrong word at its end, as Whisper would.
    """

    identity = "tones"

    def __init__(self):
        self.calls = 0

    def transcribe_segments(self, waveform, sample_rate):
        self.calls += 1
        hop = sample_rate // 100
        loud = np.abs(waveform[: len(waveform) // hop * hop]).reshape(-1, hop).max(axis=1) > 0.05
        edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(int), [0]])))
        segments, last_end = [], None
        for start, stop in zip(edges[::2], edges[1::2]):
            burst = waveform[start * hop : stop * hop]
            spectrum = np.abs(np.fft.rfft(burst, n=sample_rate))  # 1 Hz bins
            word = SpokenWord(f"{int(np.argmax(spectrum))}", start / 100, stop / 100, probability=0.9)
            if last_end is None or word.start - last_end > 0.8:
                segments.append([])
            segments[-1].append(word)
            last_end = word.end
        return segments


def one_speaker_prefix(tts):
    """A voice prefix of `tts` from 1.2 s of hum heard as "hello there" (speaker 1)."""
    t = ScriptedTranscriber([SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)])
    return tts.make_prefix(speech_like(1.2), transcriber=t)


def two_speaker_prefix(tts):
    """A voice prefix of `tts` from two recordings of hum: "hello there" (speaker 1), "how are" (speaker 2)."""
    t = ScriptedTranscriber(
        [SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)],
        [SpokenWord("how", 0.20, 0.40), SpokenWord("are", 0.50, 0.70)],
    )
    return tts.make_prefix(speech_like(1.5), speech_like(1.0, seed=1), transcriber=t)
