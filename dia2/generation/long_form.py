"""Scripts longer than one generation, spoken in parts that carry the voice across.

Dia2 speaks at most `runtime.max_context_steps` frames per utterance (about 2 minutes): past the
positions it was trained on it produces sound but no words. A longer script is cut into parts at
turn or sentence boundaries (`dia2.text.parts.split_script`), and every part after the first is
conditioned on the end of the previous part's audio, as a voice prefix whose words are the ones
the previous part spoke there (known exactly: no recogniser runs). The tail starts at a word's
first frame, so no word is cut in two. The parts' frames follow each other with no gap; decoded
by one streaming decoder they are one seamless waveform (`dia2.generation.tts.decode_updates`).

`Dia2.generate` and the serving engine both speak a script through `LongForm`, which plans each
part (`next_plan`) and turns each part's frame updates into updates of the whole (`record`): word
times counted from the start of the whole, `done` only at the end of the last part. The sampling
draws of each part are keyed by the one seed and frames counted across parts, so a seed gives
the same audio either way and no part repeats another's draws.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import torch

from dia2.audio.codec import MimiCodec
from dia2.generation.config import GenerationConfig
from dia2.generation.loop import FrameUpdate, UtterancePlan
from dia2.generation.prefix import VoicePrefix
from dia2.model.config import FRAME_RATE
from dia2.model.network import Dia2Model
from dia2.text.parts import split_script
from dia2.text.script import Entry, TextTokenIds
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)

FRAMES_PER_WORD = 6
"""Pace assumed when sizing parts: 6 frames (0.48 s) a word is slow speech, so a part fits."""
CARRY_FRAMES = 63
"""Frames (about 5 s) of the previous part's end carried into the next part as its prefix (at
most a quarter of the context, for models with a short one)."""


def carry_frames(context: int) -> int:
    """Frames of a part's end that condition the next part, for a model of `context` frames.
    (Not `dia2.data.teacher.tail_frames`, the audio a training row keeps after its speech.)"""
    return max(1, min(CARRY_FRAMES, context // 4))


def part_words(config: GenerationConfig, context: int, prefix_frames: int) -> int | None:
    """Most words in one part: config.part_words if set; None (one part) under a frame limit
    the caller chose (max_frames caps the whole utterance); else what fits the context after the
    prefix (the voice's, or the previous part's tail) at FRAMES_PER_WORD, so no part runs past the
    positions the model was trained on."""
    if config.part_words is not None:
        return config.part_words
    if config.max_frames is not None:
        return None
    return max(1, (context - prefix_frames) // FRAMES_PER_WORD)


class Planner(Protocol):
    """What `LongForm` asks of the `Dia2` (`dia2.generation.tts`) that speaks the parts:
    named here, not imported, because `dia2.generation.tts` builds on this module."""

    model: Dia2Model
    codec: MimiCodec
    ids: TextTokenIds

    def parse(self, script: str) -> list[Entry]: ...

    def plan(
        self, entries: list[Entry], config: GenerationConfig, prefix: VoicePrefix | None, feed: None
    ) -> UtterancePlan: ...


class LongForm:
    """A whole script spoken in one or more parts (one part when it fits)."""

    def __init__(self, tts: Planner, script: str, config: GenerationConfig, prefix: VoicePrefix | None) -> None:
        self.tts, self.config, self.prefix = tts, config, prefix
        context = tts.model.config.runtime.max_context_steps
        self.carry_frames = carry_frames(context)
        prefix_frames = max(prefix.codes.shape[-1] if prefix is not None else 0, self.carry_frames)
        words = part_words(config, context, prefix_frames)
        self.parts = [script] if words is None else split_script(script, words)
        if len(self.parts) > 1:
            logger.info("the script is longer than one generation: %d parts", len(self.parts))
        self.index = -1
        self._entries: list[Entry] = []
        self._codes: list[torch.Tensor] = []  # this part's frames, each [K, n]
        self._words: list[tuple[str, float]] = []  # this part's words, seconds from its start
        self._offset = 0.0  # seconds spoken by the parts before this one
        self._columns = 0  # columns run by the parts before the current one (their draw frames)
        self._last_step = -1

    @property
    def last_part(self) -> bool:
        return self.index == len(self.parts) - 1

    def next_plan(self) -> UtterancePlan | None:
        """The plan of the next part (None after the last): the user's prefix for the first part,
        the previous part's tail after that."""
        if self.last_part:
            return None
        prefix, config = self.prefix, self.config
        if self.index >= 0:
            prefix = self._carried_prefix()
            config = dataclasses.replace(config, include_prefix=False)
            self._offset += sum(c.shape[-1] for c in self._codes) / FRAME_RATE
            self._columns += self._last_step + 2  # the last update's step is its column - 1
        self.index += 1
        self._entries = self.tts.parse(self.parts[self.index])
        self._codes, self._words = [], []
        return self.tts.plan(list(self._entries), config, prefix, None)._replace(draw_base=self._columns)

    def record(self, update: FrameUpdate) -> FrameUpdate:
        """One update of the current part -> the same update of the whole script."""
        self._codes.append(update.frames)
        self._words += update.words
        self._last_step = update.step
        words = [(text, seconds + self._offset) for text, seconds in update.words]
        done = update.done and self.last_part
        return dataclasses.replace(update, words=words, done=done, truncated=update.truncated)

    def _carried_prefix(self) -> VoicePrefix | None:
        """The end of the part just spoken as a voice prefix: from the first word starting in its last
        `carry_frames` frames (or its last word, if that starts within twice as many) to its end,
        with those words and their speakers. At most `2 * carry_frames` frames."""
        codes = torch.cat(self._codes, dim=1) if self._codes else None
        if codes is None or not self._words:
            logger.warning("part %d spoke no words: the next part starts without its voice", self.index + 1)
            return None
        frames = codes.shape[-1]
        starts = [round(seconds * FRAME_RATE) for _, seconds in self._words]
        first = next((i for i, s in enumerate(starts) if s >= frames - self.carry_frames), len(starts) - 1)
        origin = starts[first]
        if origin < frames - 2 * self.carry_frames:
            logger.warning("part %d ends in a long silence: the next part starts without its voice", self.index + 1)
            return None
        speakers = _speakers(self._entries, self.tts.ids.spk1, self.tts.ids.spk2)
        lead = len(self._words) - len(speakers)  # the user's prefix words, kept with include_prefix
        if lead > 0:
            heard = [w.speaker for w in self.prefix.words] if self.prefix is not None else []
            speakers = (heard + [1] * lead)[:lead] + speakers
        ends = [*starts[first + 1 :], frames]
        words = tuple(
            SpokenWord(text, (s - origin) / FRAME_RATE, (e - origin) / FRAME_RATE, speaker)
            for (text, _), s, e, speaker in zip(self._words[first:], starts[first:], ends, speakers[first:])
        )
        return VoicePrefix(codes[:, origin:].cpu(), words, self.tts.codec.fingerprint)


def _speakers(entries: list[Entry], spk1: int, spk2: int) -> list[int]:
    """The speaker (1 or 2) of each word entry, in order: a word tagged [S1]/[S2] sets it."""
    speaker, speakers = 1, []
    for entry in entries:
        if not entry.tokens:
            continue
        speaker = {spk1: 1, spk2: 2}.get(entry.tokens[0], speaker)
        speakers.append(speaker)
    return speakers
