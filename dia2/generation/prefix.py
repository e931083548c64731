"""Voice prefixes: recorded speech that conditions the voice of what follows (spec section 6).

speaker audio -> word timestamps (a `Transcriber`, faster-whisper by default: `dia2.audio.asr`)
-> Mimi codes -> a `VoicePrefix` (codes + timed words, kept in a voice folder so a server never
re-transcribes a stored voice: `dia2.generation.voice`) -> entries and forced new_word steps
through the published prefix rule (`dia2.text.align.prefix_alignment`: what the published runtime
forces, the only prefix streams the published model was conditioned on; training rows use the
other rule there) -> one `prefill` call in the generation loop.

A prefix is one part of a voice (`dia2.generation.voice.Voice`: a prefix and/or an adapter, with
default sampling settings); "voice" names that whole unit everywhere, "prefix" this part.

Two published quirks are fixed here: both speakers' words get the same step offset (the
published runtime gave speaker 2 no +3, a plausible cause of "prefix speakers swapped"), and no
prefix column is run twice (see `dia2.generation.loop`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from dia2.audio.asr import Transcriber
from dia2.errors import Dia2Error
from dia2.generation.loop import Prefix
from dia2.text.script import Entry, TextTokenIds, Tokenizer
from dia2.text.transcript import TranscriptError, align_transcript, spread_transcript
from dia2.text.utterance import align_prefix
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)


class PrefixError(Dia2Error, ValueError):
    """A voice prefix that cannot be used; the message names the input and the fix."""


@dataclass(frozen=True)
class VoicePrefix:
    """A ready voice prefix: Mimi codes [K, P], its timed words (speaker 1's, then 2's), the
    fingerprint of the codec that made the codes (None for prefixes stored before it was recorded:
    codes of another Mimi mean other sounds, so a model with another codec refuses the prefix),
    and, for two recordings (speaker 1's, then speaker 2's), the frame where speaker 2's starts:
    the published prefix rule aligns each recording as its own file. None: one recording (or a
    prefix stored before it was recorded; then both speakers' words are aligned as one)."""

    codes: torch.Tensor
    words: tuple[SpokenWord, ...]
    codec_fingerprint: str | None = None
    speaker_2_frame: int | None = None

    def check_codec(self, fingerprint: str, codebooks: int, codebook_size: int) -> None:
        """Refuse to prefix a model whose codec is not the one that made this prefix: another
        fingerprint, another number of codebooks K, or codes outside 0 .. codebook_size - 1."""
        if self.codes.shape[0] != codebooks:
            raise PrefixError(f"the voice has {self.codes.shape[0]} codebooks but the model uses {codebooks}: "
                              "it was made with another codec")
        if self.codec_fingerprint is not None and self.codec_fingerprint != fingerprint:
            raise PrefixError(
                f"the voice was made with another Mimi codec (fingerprint {self.codec_fingerprint}, this model's is "
                f"{fingerprint}): make it again with this model (--prefix-speaker-1 ... --save-voice), or load the "
                "model with the codec the voice was made with (--mimi)"
            )
        if self.codes.numel() and not 0 <= int(self.codes.min()) <= int(self.codes.max()) < codebook_size:
            raise PrefixError(f"the voice's prefix holds codes outside this codec's codes 0 to {codebook_size - 1} "
                              "(its codes.npy was changed, or made by another codec): make the voice again")

    def check_speaker_2_frame(self, where: str) -> None:
        """Refuse a speaker_2_frame that is not a frame inside the codes."""
        frame, frames = self.speaker_2_frame, self.codes.shape[-1]
        if frame is not None and not (isinstance(frame, int) and not isinstance(frame, bool) and 0 < frame < frames):
            raise PrefixError(
                f"{where}: speaker_2_frame must be null or a frame inside the codes (1..{frames - 1}), got {frame!r}; "
                "make the voice again (--prefix-speaker-1 ... --prefix-speaker-2 ... --save-voice)"
            )


def build_prefix(
    codec,
    transcriber: Transcriber,
    speaker_1: str | os.PathLike | np.ndarray,
    speaker_2: str | os.PathLike | np.ndarray | None = None,
) -> VoicePrefix:
    """Transcribe and encode one or two speaker recordings (paths, or 24 kHz mono arrays)."""
    from dia2.audio.io import read_audio

    words: list[SpokenWord] = []
    waves: list[np.ndarray] = []
    offset = 0.0
    speaker_2_frame = None
    for speaker, source in ((1, speaker_1), (2, speaker_2)):
        if source is None:
            continue
        if speaker == 2:
            speaker_2_frame = sum(len(w) for w in waves) // codec.samples_per_frame
        name = str(source) if not isinstance(source, np.ndarray) else f"speaker {speaker} audio"
        wave = read_audio(source, codec.sample_rate) if not isinstance(source, np.ndarray) else source.astype(np.float32)
        heard = transcriber.transcribe(wave, codec.sample_rate)
        if not heard:
            raise PrefixError(f"prefix {name} contains no recognisable speech; give a clip of the speaker talking")
        words += [replace(w, start=w.start + offset, end=w.end + offset, speaker=speaker) for w in heard]
        # Keep each speaker's audio on whole frames so speaker 2's word times stay frame-exact.
        frame = codec.samples_per_frame
        padded = np.pad(wave, (0, (-len(wave)) % frame))
        waves.append(padded)
        offset += len(padded) / codec.sample_rate
    codes = codec.encode(torch.from_numpy(np.concatenate(waves)))[0]
    return VoicePrefix(codes.cpu(), tuple(words), codec.fingerprint, speaker_2_frame)


def prefix_plan(prefix: VoicePrefix, tokenizer: Tokenizer, ids: TextTokenIds) -> tuple[list[Entry], Prefix]:
    """Entries (each speaker's first word tagged) and the Prefix with its forced new_word steps.

    The words go through `align_prefix`: the published runtime's prefix rule (each word padded
    until the next, no break entries, first word at frame 1 or later in its recording), since a
    prefix is forced, not generated, and the published model knows only those prefix streams.
    Training rows follow the other rule (`dia2.text.align`, docs/alignment.md).
    """
    prefix.check_speaker_2_frame("voice prefix")
    try:
        utterance = align_prefix(prefix.words, tokenizer, ids, prefix.speaker_2_frame)
    except ValueError as exc:
        raise PrefixError(f"voice prefix: {exc}") from exc
    # Words near the end of the prefix get steps past its last column (step = frame + 2); the
    # loop keeps forcing actions up to the last prefix step, so none is dropped or said twice.
    return list(utterance.entries), Prefix(prefix.codes, utterance.alignment.new_word_steps, utterance.num_words)


def with_transcript(prefix: VoicePrefix, transcript: str) -> VoicePrefix:
    """The prefix with the words of a known transcript in place of the recogniser's, each timed from
    the heard words it corresponds to (`dia2.text.transcript.align_transcript`): matching words keep
    their heard times, replaced, split, merged or missed words take the span they replace."""
    try:
        alignment = align_transcript(prefix.words, transcript)
    except TranscriptError as exc:
        raise PrefixError(f"transcript: {exc}") from exc
    if alignment.changed:
        logger.info(
            "transcript aligned to the recording (%d of %d typed words heard as typed):\n%s",
            alignment.matched, len(alignment.rows), "\n".join("  ".join(row) for row in alignment.table()),
        )
    return replace(prefix, words=alignment.words)


class _SpeechSpans:
    """A `Transcriber` that hears no words, only where the speech is (untitled words)."""

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> list[SpokenWord]:
        from dia2.audio.activity import speech_spans

        return speech_spans(waveform, sample_rate)


def prefix_from_transcript(
    codec,
    transcript: str,
    speaker_1: str | os.PathLike | np.ndarray,
    speaker_2: str | os.PathLike | np.ndarray | None = None,
) -> VoicePrefix:
    """A prefix without a recogniser: the known transcript's words timed from the speech found in
    the recordings (`dia2.text.transcript.spread_transcript`; tag a dialogue's transcript
    `[S1] ... [S2] ...` to say whose words are whose)."""
    prefix = build_prefix(codec, _SpeechSpans(), speaker_1, speaker_2)
    try:
        alignment = spread_transcript(prefix.words, transcript)
    except TranscriptError as exc:
        raise PrefixError(f"transcript: {exc}") from exc
    table = "\n".join("  ".join(row) for row in alignment.table())
    logger.info("transcript spread over the speech in the recording:\n%s", table)
    return replace(prefix, words=alignment.words)
