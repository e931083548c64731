"""The Python API: `Dia2.from_repo(...)` (a Hub repo id or a local folder), `generate`, `stream`.

    from dia2 import Dia2, GenerationConfig
    tts = Dia2.from_repo("nari-labs/Dia2-2B")
    result = tts.generate("[S1] Hello there. [S2] Hi!", GenerationConfig(seed=0))
    result.save("hello.wav")

A `Dia2` owns the model, tokenizer and codec and serves many calls. Eager calls each own their
decode state; random draws are keyed by the seed (`dia2.generation.sampling`), so no RNG state
is shared. With a kernel wrapper (CUDA graphs, torch.compile) the wrapped kernels are kept
across calls: their captured graphs and their decode state per shape (reset in place), so
graphs are captured once per shape. Such calls run one at a time per instance: finish (or
drop) a stream before the next call. Many requests at once: `dia2.serving.engine`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch

from dia2.audio.asr import Transcriber, WhisperTranscriber
from dia2.device import resolve_device
from dia2.generation.graphs import lru_get
from dia2.generation.config import GenerationConfig
from dia2.generation.kernels import FrameKernels
from dia2.generation.loop import (
    EntryFeed,
    FrameLoop,
    FrameUpdate,
    Prefix,
    UtterancePlan,
    loop_capacity,
)
from dia2.generation.long_form import LongForm
from dia2.generation.prefix import PrefixError, VoicePrefix, build_prefix, prefix_plan
from dia2.model.assets import DEFAULT_MODEL
from dia2.model.checkpoint import resolve_files
from dia2.model.config import FRAME_RATE
from dia2.model.network import Dia2Model
from dia2.model.quant import QuantError
from dia2.text.script import (
    Entry,
    ScriptError,
    TextTokenIds,
    parse_script,
    parse_stream,
)
from dia2.text.state_machine import StateMachine
from dia2.text.tokenizer import load_tokenizer, tokenizer_source
from dia2.tiny import model_source

if TYPE_CHECKING:
    from dia2.audio.codec import MimiCodec

logger = logging.getLogger(__name__)

KernelWrapper = Callable[[FrameKernels], FrameKernels]

# Wrapped kernels a `Dia2` keeps, one per sampling setup: each may hold captured graphs and
# full-capacity decode states, so only the setups in recent use stay.
KEPT_KERNELS = 2


@dataclass
class GenerationResult:
    """audio_tokens [K, F] Mimi codes, waveform [S] float32 in [-1, 1], word timestamps
    (word, start seconds), and whether the frame limit cut the script short."""

    audio_tokens: torch.Tensor
    waveform: np.ndarray
    sample_rate: int
    timestamps: list[tuple[str, float]]
    truncated: bool = False

    @property
    def duration(self) -> float:
        return len(self.waveform) / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audio in the format its extension names (dia2.audio.encode.EXTENSIONS: mp3, opus, ogg, aac, flac, wav, pcm)."""
        from dia2.audio.io import write_audio

        return write_audio(path, self.waveform, self.sample_rate)


@dataclass
class AudioChunk:
    """One piece of a stream: waveform [n] (may be empty), the codes [K, f] it decodes, and
    the words that started since the previous chunk."""

    waveform: np.ndarray
    codes: torch.Tensor
    words: list[tuple[str, float]] = field(default_factory=list)
    done: bool = False


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 weights on CUDA (half the bandwidth per step), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


class Dia2:
    """A loaded Dia2 runtime: model + tokenizer + Mimi codec."""

    def __init__(self, model: Dia2Model, tokenizer, codec, kernel_wrapper: KernelWrapper | None = None) -> None:
        if codec.num_codebooks != model.config.num_codebooks:
            raise ValueError(
                f"the codec gives {codec.num_codebooks} codebooks but the model expects "
                f"{model.config.num_codebooks}; pass the Mimi this checkpoint was trained with"
            )
        self.model, self.tokenizer, self.codec = model, tokenizer, codec
        self.ids = TextTokenIds.from_tokenizer(model.config.data, tokenizer)
        self.kernel_wrapper = kernel_wrapper
        self._wrapped: OrderedDict[tuple, FrameKernels] = OrderedDict()

    @classmethod
    def from_repo(
        cls,
        repo_or_dir: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        config_path: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
        tokenizer: str | None = None,
        mimi: str | None = None,
        low_vram: str | None = None,
        adapter: str | os.PathLike | None = None,
        merge_adapter: bool = True,
        kernel_wrapper: KernelWrapper | None = None,
    ) -> "Dia2":
        """Load model, tokenizer and Mimi from a Hub repo id, a local folder, or "tiny" (the
        embedded demo model, `dia2.tiny`).

        device: None or "auto" is CUDA when available, else the CPU; a device this machine lacks
        is refused (`dia2.device.DeviceError`) before anything loads.

        tokenizer / mimi override the manifest and config; low_vram is "8bit" or "4bit";
        adapter is a PEFT LoRA folder or repo id (merged unless merge_adapter=False).
        """
        device = str(resolve_device(device))
        dtype = dtype or default_dtype(device)
        if low_vram and adapter is not None and not merge_adapter:
            raise QuantError("low_vram needs the adapter merged into the base first: drop the unmerged-adapter option (--unmerged-adapter)")
        files = resolve_files(model_source(repo_or_dir, revision), config_path, weights_path)
        # A quantized model is loaded on the CPU, then quantized layer by layer onto the device.
        model = Dia2Model.from_files(files, dtype=dtype, device="cpu" if low_vram else device)
        if adapter is not None:
            from dia2.model.adapters import load_adapter

            model = load_adapter(model, adapter, merge=merge_adapter)
        if low_vram:
            from dia2.model.quant import quantize

            model = quantize(model, low_vram, device=device)
        tok = load_tokenizer(tokenizer or tokenizer_source(files.source, files.tokenizer, model.config.assets.tokenizer))
        mimi_source = mimi or files.source.asset(files.mimi) or model.config.assets.mimi
        codec = load_codec(mimi_source, mimi is not None, device, model.config.num_codebooks)
        return cls(model, tok, codec, kernel_wrapper)

    # --- scripts and voice prefixes ------------------------------------------------------------

    def parse(self, script: str) -> list[Entry]:
        return parse_script(script, self.tokenizer, self.ids)

    def make_prefix(
        self,
        speaker_1: str | os.PathLike | np.ndarray,
        speaker_2: str | os.PathLike | np.ndarray | None = None,
        transcriber: Transcriber | None = None,
    ) -> VoicePrefix:
        """Transcribe + encode prefix recordings once; keep the prefix (in a voice folder:
        `dia2.generation.voice`) to reuse it."""
        return build_prefix(self.codec, transcriber or WhisperTranscriber(), speaker_1, speaker_2)

    # --- generation ----------------------------------------------------------------------------

    def _loop(self, entries: list[Entry], config: GenerationConfig, prefix: VoicePrefix | None,
              feed: EntryFeed | None) -> FrameLoop:
        plan = self.plan(entries, config, prefix, feed)
        return FrameLoop(self.model, plan, kernels=self._kernels(plan.config), seed=seed_of(config))

    def plan(
        self, entries: list[Entry], config: GenerationConfig, prefix: VoicePrefix | None, feed: EntryFeed | None
    ) -> UtterancePlan:
        """What one utterance starts from: its state machine and state, the config (max_frames
        within the context), the voice prefix. Checked here, before any model work: the prefix's
        codec and a whole script's fit within the frame limit."""
        context = self.model.config.runtime.max_context_steps
        config = within_context(config, context)
        machine = StateMachine.from_config(self.model.config.data, self.ids, initial_padding=config.initial_padding)
        forced: Prefix | None = None
        if prefix is not None:
            prefix.check_codec(self.codec.fingerprint, self.model.config.num_codebooks, self.codec.codebook_size)
            prefix_entries, forced = prefix_plan(prefix, self.tokenizer, self.ids)
            entries = prefix_entries + entries
        if feed is None:
            # Before the loop allocates its decode state (and graphs may be captured for it).
            capacity = loop_capacity(forced.frames if forced is not None else 0, config, context)
            tail = max(self.model.config.data.delays) + machine.max_padding + config.initial_padding
            _check_fits(entries, capacity, tail, config.max_frames or context, context, config.part_words)
        return UtterancePlan(machine, machine.new_state(entries), config, forced, feed)

    def _kernels(self, config: GenerationConfig) -> FrameKernels:
        """The frame kernels of a sampling setup. Eager: fresh ones (they hold no state).
        Wrapped (graphs, compile): the kept kernels of this setup, built on first use."""
        if self.kernel_wrapper is None:
            return FrameKernels(self.model, config)
        # Everything FrameKernels reads from the config.
        key = (config.text, config.audio, config.cfg_scale, config.cfg_filter_k)
        build = lambda: self.kernel_wrapper(FrameKernels(self.model, config))
        return lru_get(self._wrapped, key, build, KEPT_KERNELS)

    @torch.inference_mode()
    def generate(
        self,
        script: str,
        config: GenerationConfig | None = None,
        *,
        prefix: VoicePrefix | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """Speak a whole script, continuing the voice of `prefix` if given. `progress(frame,
        limit)` is called after every frame.

        A script longer than one generation is spoken in parts (`dia2.generation.long_form`).
        """
        config = config or GenerationConfig()
        frames: list[torch.Tensor] = []
        words: list[tuple[str, float]] = []
        truncated = False
        for update, limit in self._updates(script, config, prefix):
            frames.append(update.frames)
            words += update.words
            truncated = truncated or update.truncated
            if progress is not None:
                progress(update.step + 1, limit)
        return generation_result(torch.cat(frames, dim=1), self.codec, words, truncated)

    def _updates(self, script: str, config: GenerationConfig,
                 prefix: VoicePrefix | None) -> Iterator[tuple[FrameUpdate, int]]:
        """Frame updates of a whole script, part after part, with the frame limit so far.

        Every part draws with the one seed (an unseeded call picks one), each at its own frames.
        """
        speech = LongForm(self, script, config, prefix)
        seed = seed_of(config)
        kernels: FrameKernels | None = None
        before = 0  # frame steps run by earlier parts
        for plan in iter(speech.next_plan, None):
            kernels = kernels or self._kernels(plan.config)
            loop = FrameLoop(self.model, plan, kernels=kernels, seed=seed)
            for update in loop:
                yield dataclasses.replace(speech.record(update), step=before + update.step), before + loop.capacity
            before += loop.last_column + 1

    @torch.inference_mode()
    def stream(
        self,
        script: str | Iterable[str],
        config: GenerationConfig | None = None,
        *,
        prefix: VoicePrefix | None = None,
    ) -> Iterator[AudioChunk]:
        """Yield audio as frames are generated. `script` may be a string or an iterable of text
        pieces (e.g. tokens from an LLM): speech starts before the whole script is known.

        Pieces are joined as given, with no separator (LLM tokens carry their own spaces): send
        "[S1] Hi. " then "[S2] Hello.", not "[S1] Hi." then "[S2] Hello.". The words the first
        frame depends on (the first word and the look-ahead after it) are parsed before any audio
        is yielded, so a script that is bad from the start fails before speaking; a later bad
        piece raises ScriptError where it arrives.
        """
        config = config or GenerationConfig()
        if isinstance(script, str):
            updates: Iterable[FrameUpdate] = (update for update, _ in self._updates(script, config, prefix))
        else:
            entries = parse_stream(iter(script), self.tokenizer, self.ids)
            updates = self._loop([], config, prefix, EntryFeed([e] for e in entries))
        yield from decode_updates(updates, self.codec)


def seed_of(config: GenerationConfig) -> int:
    """The seed of a call: the config's, or one drawn from torch's default generator (so
    `torch.manual_seed` makes unseeded calls repeatable too)."""
    return config.seed if config.seed is not None else int(torch.randint(2**62, ()).item())


def generation_result(
    codes: torch.Tensor, codec: MimiCodec, words: list[tuple[str, float]], truncated: bool
) -> GenerationResult:
    """A whole utterance's result from its codes [K, F] (any device), decoded in one call."""
    waveform = np.zeros(0, dtype=np.float32)
    if codes.shape[-1]:
        waveform = codec.decode(codes.unsqueeze(0))[0].float().clamp(-1, 1).cpu().numpy()
    return GenerationResult(codes.cpu(), waveform, codec.sample_rate, words, truncated)


def decode_updates(updates: Iterable[FrameUpdate], codec: MimiCodec) -> Iterator[AudioChunk]:
    """Audio chunks of a stream of frame updates, decoded as they come (one streaming decoder,
    so the audio is seamless however the frames are grouped). Updates without frames or words
    give no chunk, except the last."""
    decoder = UpdateDecoder(codec)
    for update in updates:
        chunk = decoder.push(update)
        if chunk is not None:
            yield chunk


class UpdateDecoder:
    """One stream's frame updates -> audio chunks, an update at a time (`decode_updates` for an
    iterator; a server that receives updates in batches pushes them as they come)."""

    def __init__(self, codec: MimiCodec) -> None:
        self._decoder = codec.stream_decoder()

    def push(self, update: FrameUpdate) -> AudioChunk | None:
        """The update's chunk; None for an update without frames or words that is not the last."""
        frames = update.frames
        audio = self._decoder.push(frames.unsqueeze(0))[0] if frames.shape[-1] else None
        if update.done:
            tail = self._decoder.flush()[0]
            audio = tail if audio is None else torch.cat([audio, tail])
        if audio is None and not update.words and not update.done:
            return None
        wave = np.zeros(0, np.float32) if audio is None else audio.float().clamp(-1, 1).cpu().numpy()
        return AudioChunk(wave, frames.cpu(), update.words, update.done)


def load_codec(
    source: str, given: bool, device: str, num_codebooks: int, dtype: torch.dtype = torch.float32
) -> MimiCodec:
    """The Mimi codec of a model; a failure names the flag that chooses another (`--mimi`)."""
    from dia2.audio.codec import CodecError, MimiCodec

    try:
        return MimiCodec.from_pretrained(source, device=device, dtype=dtype, num_codebooks=num_codebooks)
    except CodecError as exc:
        origin = "given with --mimi" if given else "named by the model (manifest or config assets.mimi)"
        raise CodecError(f"{exc} [the codec was {origin}; pass --mimi (Python: mimi=) to use another]") from exc


def within_context(config: GenerationConfig, context: int) -> GenerationConfig:
    """`config` with max_frames capped at the model's context (runtime.max_context_steps): past
    the positions it was trained on the model produces no words, only sound."""
    if config.max_frames is None or config.max_frames <= context:
        return config
    logger.warning(
        "max_frames=%d is past the model's context of %d frames (%.0f s): capped at %d; split longer scripts",
        config.max_frames, context, context / FRAME_RATE, context,
    )
    return dataclasses.replace(config, max_frames=context)


def _check_fits(
    entries: list[Entry], capacity: int, tail: int, max_frames: int, context: int, part_words: int | None
) -> None:
    """Refuse a script that cannot fit the frame limit even at the fastest pace.

    Each word takes at least its forced padding (one frame per token) plus its new_word frame.
    """
    needed = sum(max(len(e.tokens), e.padding) + 1 for e in entries) + tail
    if needed > capacity:
        fix = "split it into shorter scripts"
        if part_words is not None:
            fix = f"lower part_words (--part-words; it is {part_words}) or leave it unset"
        if max_frames < context:
            fix += f", or raise max_frames (--max-frames, up to the model's context of {context})"
        raise ScriptError(
            f"the script needs at least {needed} frames but the limit is {capacity} ({capacity / FRAME_RATE:.0f} s): {fix}"
        )
