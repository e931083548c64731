"""The Mimi audio codec: 24 kHz mono waveform <-> discrete codes at 12.5 frames/s.

Dia2 speaks in Mimi codes (spec section 1): `kyutai/mimi`, 1920 samples per frame, codebook size
2048, all 32 codebooks. `MimiCodec` wraps `transformers.MimiModel` with the frame arithmetic,
input checks and errors the rest of the project relies on, for training data (encode) and
inference (decode, or stream-decode frame by frame). It reads only the output objects
(`.audio_codes`, `.audio_values`), which behave alike on transformers 4.x and 5.x.

Streaming decode lives in `codec_stream.py`; seeded random stand-ins for tests, demos and
benchmarks (`build_tiny_mimi`, `build_random_mimi`) live in `dia2.tiny`.

Shapes: B batch, K codebooks, T frames, S samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import huggingface_hub.constants
import torch
import torch.nn.functional as F
from transformers import MimiModel

from dia2.audio.codec_stream import MimiStreamDecoder, check_codes
from dia2.errors import Dia2Error
from dia2.model.config import DEFAULT_MIMI_REPO

logger = logging.getLogger(__name__)

_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "_commit_hash"}


class CodecError(Dia2Error, OSError):
    """The codec cannot be loaded; the message names the input and the fix."""


class MimiCodec:
    """Encode waveforms to Mimi codes and decode them back, batched, without gradients."""

    def __init__(self, model: MimiModel, num_codebooks: int | None = None) -> None:
        config = model.config
        total = int(config.num_quantizers)
        num_codebooks = total if num_codebooks is None else int(num_codebooks)
        semantic = int(getattr(config, "num_semantic_quantizers", 1))
        if not semantic <= num_codebooks <= total:
            raise ValueError(f"num_codebooks must be in [{semantic}, {total}] for this Mimi, got {num_codebooks}")
        samples = config.sampling_rate / config.frame_rate
        if samples != int(samples):
            raise ValueError(
                f"Mimi frame rate {config.frame_rate} does not divide sample rate {config.sampling_rate} "
                "into whole frames"
            )
        self.model = model.eval()
        self._num_codebooks = num_codebooks
        self._samples_per_frame = int(samples)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str | os.PathLike = DEFAULT_MIMI_REPO,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_codebooks: int | None = None,
        revision: str | None = None,
    ) -> "MimiCodec":
        """Load a Mimi from a local folder (`MimiModel.save_pretrained`) or a Hub repo id.

        Raises CodecError when the folder does not exist or holds no Mimi, or the repo cannot be
        fetched (e.g. not cached while HF_HUB_OFFLINE=1).
        """
        model = load_mimi(repo_or_path, revision)
        # Published Mimi weights are float32; converting after loading avoids the 4.x/5.x
        # `torch_dtype`/`dtype` keyword split.
        return cls(model.to(device=device, dtype=dtype), num_codebooks)

    @property
    def sample_rate(self) -> int:
        """Audio samples per second (24000)."""
        return int(self.model.config.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Code frames per second (12.5)."""
        return float(self.model.config.frame_rate)

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per code frame (1920)."""
        return self._samples_per_frame

    @property
    def num_codebooks(self) -> int:
        """Codebooks K this codec encodes to and expects to decode."""
        return self._num_codebooks

    @property
    def codebook_size(self) -> int:
        """Ids per codebook (2048): valid codes are 0 .. codebook_size - 1."""
        return int(self.model.config.codebook_size)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; inputs are moved there."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's weight dtype; waveforms are cast to it, decoded audio is always float32."""
        return next(self.model.parameters()).dtype

    def num_frames(self, num_samples: int) -> int:
        """Frames T that `encode` returns for S samples: ceil(S / samples_per_frame)."""
        return math.ceil(num_samples / self._samples_per_frame)

    @torch.inference_mode()
    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform [S], [B, S] or [B, 1, S] at `sample_rate` -> codes int64 [B, K, T], T = ceil(S / 1920).

        The tail is zero-padded to a whole frame, so the last frame covers the end of the audio.
        """
        wav = self._as_batch(waveform)
        frames = self.num_frames(wav.shape[-1])
        wav = F.pad(wav, (0, frames * self._samples_per_frame - wav.shape[-1]))
        inputs = wav[:, None].to(device=self.device, dtype=self.dtype)
        codes = self.model.encode(inputs, num_quantizers=self._num_codebooks, return_dict=True).audio_codes
        expected = (wav.shape[0], self._num_codebooks, frames)
        if tuple(codes.shape) != expected:
            raise RuntimeError(f"Mimi returned codes {tuple(codes.shape)}, expected {expected}")
        return codes.long()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] or [K, T] (ids in [0, codebook_size)) -> float32 waveform [B, T * 1920] in [-1, 1]."""
        codes = check_codes(codes, self._num_codebooks, self.codebook_size)
        batch, _, frames = codes.shape
        if frames == 0:
            return torch.zeros(batch, 0, device=self.device)
        audio = self.model.decode(codes.to(self.device), return_dict=True).audio_values
        expected = frames * self._samples_per_frame
        if audio.shape[-1] != expected:
            raise RuntimeError(f"Mimi decoded {audio.shape[-1]} samples for {frames} frames, expected {expected}")
        return audio[:, 0].float().clamp(-1.0, 1.0)

    @property
    def fingerprint(self) -> str:
        """Identity of what the codes mean: architecture, codebooks used and the first codebook's
        centroids. Paths and library versions are left out, so the same codec on another
        machine (or from the Hub cache vs a local copy) has the same fingerprint."""
        config = {k: v for k, v in self.model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        digest.update(str(self.num_codebooks).encode())
        first = self.model.quantizer.semantic_residual_vector_quantizer.layers[0].codebook.embed
        digest.update(first.detach().float().cpu().numpy().tobytes())
        return "mimi-" + digest.hexdigest()[:16]

    def stream_decoder(self, batch_size: int = 1) -> MimiStreamDecoder:
        """A fresh streaming decoder: `push(codes [B, K, n])` returns the n frames' audio [B, n * 1920]
        at once; the concatenated pushes equal `decode` of all frames (see dia2/audio/codec_stream.py)."""
        return MimiStreamDecoder(self.model, self._num_codebooks, batch_size)

    def _as_batch(self, waveform: torch.Tensor) -> torch.Tensor:
        """Normalise a waveform to float [B, S], refusing shapes that would silently mean something else."""
        wav = torch.as_tensor(waveform)
        if not wav.is_floating_point():
            raise ValueError(f"waveform must be floating point samples in [-1, 1], got dtype {wav.dtype}")
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        elif wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"waveform must be [S], [B, S] or [B, 1, S] (mono), got shape {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise ValueError("waveform is empty (0 samples)")
        if not torch.isfinite(wav).all():
            raise ValueError("waveform contains NaN or infinite samples")
        return wav


def _offline() -> bool:
    """Whether huggingface_hub is forbidden the network: it reads HF_HUB_OFFLINE once, at import,
    so ask it, and also honour the variable set later (with the truthy spellings it accepts)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)) or env


def load_mimi(repo_or_path: str | os.PathLike = DEFAULT_MIMI_REPO, revision: str | None = None) -> MimiModel:
    """`MimiModel.from_pretrained` with its failures turned into one CodecError that says what to do."""
    text = str(repo_or_path)
    path = Path(text).expanduser()
    # Something that looks like a path must be an existing folder; otherwise transformers would
    # try it as a Hub repo id and report a confusing network error.
    looks_like_path = path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path and not path.is_dir():
        raise CodecError(
            f"Mimi folder '{text}' does not exist or is not a folder: pass a folder written by "
            f"MimiModel.save_pretrained (config.json + model.safetensors) or a Hub repo id like '{DEFAULT_MIMI_REPO}'"
        )
    try:
        model, info = MimiModel.from_pretrained(
            str(path) if looks_like_path else text, revision=revision, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as err:
        # OSError: files missing or not fetchable; ValueError/RuntimeError: not a Mimi config, or
        # weights of another geometry.
        if looks_like_path:
            fix = "pass a folder written by MimiModel.save_pretrained (config.json + model.safetensors)"
        elif _offline():
            fix = (
                "it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading: "
                "pass a local folder or unset HF_HUB_OFFLINE"
            )
        else:
            fix = "check the repo id and revision and your network, or pass a local folder"
        raise CodecError(f"cannot load Mimi '{text}': {fix} ({type(err).__name__}: {err})") from err
    missing = sorted(info.get("missing_keys", []))
    if missing:
        # transformers fills missing weights randomly and only warns: the codec would emit noise.
        raise CodecError(
            f"Mimi checkpoint '{text}' lacks {len(missing)} weights (e.g. {missing[:3]}): it is not a complete "
            "Mimi; pass a folder written by MimiModel.save_pretrained or the kyutai/mimi repo"
        )
    logger.info("loaded Mimi %s (%d codebooks of %d)", text, model.config.num_quantizers, model.config.codebook_size)
    return model
