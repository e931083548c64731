"""Frame-by-frame Mimi decoding that reproduces a one-shot decode.

Mimi's decoder is causal end to end: causal convolutions (left padding only), transposed
convolutions whose overhang is trimmed on the right, and a causal transformer with a sliding
attention window. The audio of frame t therefore depends only on frames <= t, and a stream that
carries the right state between calls can emit each frame's 1920 samples as soon as the frame
arrives, with no look-ahead, and match the one-shot decode up to float rounding.

`transformers` gives the decoder transformer a KV cache, but not the SEANet convolutions (their
padding cache exists only on the encoder side). `MimiStreamDecoder` therefore runs the model's own
modules and weights layer by layer, carrying for each layer what the next chunk needs:

- causal `MimiConv1d` (stride 1): the last `padding_total` input samples (its receptive field);
- `MimiConvTranspose1d`: the `kernel - stride` output samples that overlap the next chunk, which
  the next chunk's output is added onto (overlap-add);
- the decoder transformer: a `DynamicCache` (KV cache; positions continue across calls).

Shapes: B batch, K codebooks, T frames, n frames in one chunk, S samples.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import MimiModel
from transformers.cache_utils import DynamicCache
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
)

logger = logging.getLogger(__name__)

# Elementwise layers hold no state across time, so a chunk runs through them unchanged.
_STATELESS = (nn.ELU, nn.Identity)


def check_codes(codes: torch.Tensor, num_codebooks: int, codebook_size: int) -> torch.Tensor:
    """Validate Mimi codes and return them as int64 [B, K, T].

    Accepts [K, T] (one item) or [B, K, T]. Raises ValueError naming the problem: wrong rank,
    a codebook count other than `num_codebooks`, a non-integer dtype, or an id outside
    [0, codebook_size) (e.g. the Dia2 grid's audio bos 2048 / pad 2049 left in by mistake).
    """
    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"Mimi codes must be integers, got dtype {codes.dtype}")
    if codes.dim() == 2:
        codes = codes.unsqueeze(0)
    if codes.dim() != 3:
        raise ValueError(f"Mimi codes must be [K, T] or [B, K, T], got shape {tuple(codes.shape)}")
    if codes.shape[1] != num_codebooks:
        raise ValueError(
            f"Mimi codes have {codes.shape[1]} codebooks (shape {tuple(codes.shape)}), this codec uses "
            f"{num_codebooks}: pass codes [B, {num_codebooks}, T] or build the codec with "
            f"num_codebooks={codes.shape[1]}"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"Mimi code ids must lie in [0, {codebook_size}), got min {int(codes.min())} max {int(codes.max())}; "
            "grid-only ids (audio bos/pad) must be removed before decoding"
        )
    return codes.long()


@dataclass(frozen=True)
class DecoderParts:
    """The pieces of a Mimi decoder, wherever the installed `transformers` keeps them."""

    quantizer: nn.Module
    upsample: MimiConvTranspose1d | None
    transformer: nn.Module
    seanet: nn.Module


def decoder_parts(model: MimiModel) -> DecoderParts:
    """Locate Mimi's decoder modules in the 5.x layout (`model.decoder` is a MimiDecoderModel
    holding upsample/transformer/SEANet) or the flat 4.x layout (`model.decoder` is the SEANet)."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        raise ValueError("this Mimi model has no decoder (built with decoder_config=None); load a full Mimi")
    if hasattr(decoder, "decoder_seanet"):
        return DecoderParts(model.quantizer, decoder.upsample, decoder.decoder_transformer, decoder.decoder_seanet)
    return DecoderParts(model.quantizer, model.upsample, model.decoder_transformer, decoder)


def _check_streamable(module: nn.Module) -> None:
    """Refuse, before any audio is produced, a decoder layer whose state we do not know how to carry."""
    if isinstance(module, MimiConv1d):
        if not module.causal or module.conv.stride[0] != 1 or module.pad_mode not in ("constant", "replicate"):
            raise ValueError(
                f"streaming decode needs causal stride-1 convolutions with constant/replicate padding, got "
                f"causal={module.causal} stride={module.conv.stride[0]} pad_mode={module.pad_mode!r}"
            )
    elif isinstance(module, MimiConvTranspose1d):
        if module.padding_left != 0:
            raise ValueError(f"streaming decode needs trim_right_ratio=1.0 (left trim {module.padding_left} != 0)")
    elif isinstance(module, MimiResnetBlock):
        for layer in [*module.block, module.shortcut]:
            _check_streamable(layer)
    elif isinstance(module, nn.ModuleList):
        for layer in module:
            _check_streamable(layer)
    elif not isinstance(module, _STATELESS):
        raise ValueError(f"streaming decode does not know how to carry state through {type(module).__name__}")


class _ConvState:
    """Per-layer carried samples of the decoder's convolutions, keyed by module identity."""

    def __init__(self) -> None:
        self.tails: dict[int, torch.Tensor] = {}

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One chunk [B, C, L] through `module`, updating its carried state."""
        if isinstance(module, MimiConv1d):
            return self._conv(module, x)
        if isinstance(module, MimiConvTranspose1d):
            return self._conv_transpose(module, x)
        if isinstance(module, MimiResnetBlock):
            hidden = x
            for layer in module.block:
                hidden = self.run(layer, hidden)
            return self.run(module.shortcut, x) + hidden
        if isinstance(module, nn.ModuleList):
            for layer in module:
                x = self.run(layer, x)
            return x
        return module(x)

    def _conv(self, module: MimiConv1d, x: torch.Tensor) -> torch.Tensor:
        pad = int(module.padding_total)
        past = self.tails.get(id(module))
        if past is None:
            # The same left padding the one-shot forward applies to the start of the signal.
            past = x[..., :1].expand(-1, -1, pad) if module.pad_mode == "replicate" else x.new_zeros(*x.shape[:2], pad)
        x = torch.cat([past, x], dim=-1)
        self.tails[id(module)] = x[..., x.shape[-1] - pad :]
        return module.conv(x)

    def _conv_transpose(self, module: MimiConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
        y = _conv_transpose_gemm(module.conv, x) if module.conv.groups == 1 else module.conv(x)
        overlap = module.conv.kernel_size[0] - module.conv.stride[0]
        bias = module.conv.bias
        past = self.tails.get(id(module))
        if past is not None:
            y = torch.cat([y[..., :overlap] + past, y[..., overlap:]], dim=-1)
        tail = y[..., y.shape[-1] - overlap :]
        # The overhang is completed by the next chunk, whose own output already carries the bias once.
        self.tails[id(module)] = tail - bias[None, :, None] if bias is not None else tail
        return y[..., : y.shape[-1] - overlap]


def _conv_transpose_gemm(conv: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for an ungrouped, unpadded transposed conv, as one matmul plus overlap-add.

    On CPU, torch sends short inputs of Mimi's wide transposed convs to a slow path
    (slow_conv_transpose2d: ~45 ms for 2 steps of the 1024->512 kernel-16 layer, versus ~2 ms here),
    which would dominate a frame-by-frame decode. x [B, Cin, L] -> [B, Cout, (L - 1) * stride + kernel].
    """
    stride, kernel = conv.stride[0], conv.kernel_size[0]
    if conv.padding[0] or conv.output_padding[0] or conv.dilation[0] != 1:
        return conv(x)
    batch, _, length = x.shape
    blocks = -(-kernel // stride)
    weight = conv.weight  # [Cin, Cout, kernel]
    if blocks * stride != kernel:
        weight = nn.functional.pad(weight, (0, blocks * stride - kernel))
    taps = (x.transpose(1, 2) @ weight.flatten(1)).view(batch, length, -1, blocks, stride)
    out = x.new_zeros(batch, taps.shape[2], length + blocks - 1, stride)
    for block in range(blocks):
        # Input step l writes block `block` of its taps at output block l + block (overlap-add).
        out[:, :, block : block + length] += taps[:, :, :, block].permute(0, 2, 1, 3)
    out = out.flatten(2)[..., : (length - 1) * stride + kernel]
    return out if conv.bias is None else out + conv.bias[None, :, None]


def _new_kv_cache(transformer: nn.Module) -> DynamicCache:
    """An empty KV cache; with the config, transformers 5.x also drops keys older than the window."""
    try:
        return DynamicCache(config=transformer.config)
    except TypeError:
        # transformers 4.x: a growing cache; Mimi's attention mask applies the window.
        return DynamicCache()


def _cache_kwarg(transformer: nn.Module) -> str:
    """transformers 5.x names the KV-cache argument `cache`, 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(transformer.forward).parameters else "past_key_values"


class MimiStreamDecoder:
    """Decode Mimi codes chunk by chunk as they arrive; the audio equals a one-shot decode.

    Each `push` of n frames returns exactly n * samples_per_frame samples: Mimi's decoder is
    causal, so nothing is held back and `flush` returns an empty [B, 0] tensor (it is still the
    call that ends a stream, and resets the state so the decoder can start another one).
    The state is owned by this object: a server keeps one decoder per session.
    """

    def __init__(self, model: MimiModel, num_codebooks: int, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.num_codebooks = num_codebooks
        self.batch_size = batch_size
        self.codebook_size = int(model.config.codebook_size)
        self.samples_per_frame = round(model.config.sampling_rate / model.config.frame_rate)
        self._parts = decoder_parts(model)
        for module in (self._parts.upsample, self._parts.seanet.layers):
            if module is not None:
                _check_streamable(module)
        self._cache_kwarg = _cache_kwarg(self._parts.transformer)
        self.reset()

    @property
    def frames_decoded(self) -> int:
        """Frames pushed since the stream started."""
        return self._frames

    def reset(self) -> None:
        """Forget every carried sample and cached key: the next push starts a new stream."""
        self._convs = _ConvState()
        self._kv = _new_kv_cache(self._parts.transformer)
        self._frames = 0

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode the next n frames: codes [B, K, n] (or [K, n] when B = 1) -> float32 [B, n * 1920] in [-1, 1]."""
        codes = check_codes(codes, self.num_codebooks, self.codebook_size)
        if codes.shape[0] != self.batch_size:
            raise ValueError(f"this stream decodes batch {self.batch_size}, got codes of shape {tuple(codes.shape)}")
        n = codes.shape[-1]
        param = next(self.model.parameters())
        if n == 0:
            return torch.zeros(self.batch_size, 0, device=param.device)
        latents = self._parts.quantizer.decode(codes.to(param.device))
        hidden = latents if self._parts.upsample is None else self._convs.run(self._parts.upsample, latents)
        out = self._parts.transformer(hidden.transpose(1, 2), use_cache=True, **{self._cache_kwarg: self._kv})
        audio = self._convs.run(self._parts.seanet.layers, out.last_hidden_state.transpose(1, 2))
        expected = n * self.samples_per_frame
        if audio.shape[-1] != expected:
            raise RuntimeError(f"stream produced {audio.shape[-1]} samples for {n} frames, expected {expected}")
        self._frames += n
        return audio[:, 0].float().clamp(-1.0, 1.0)

    def flush(self) -> torch.Tensor:
        """End the stream: return the audio still held back ([B, 0]: a causal decoder holds none) and reset."""
        logger.debug("flushing Mimi stream after %d frames", self._frames)
        rest = torch.zeros(self.batch_size, 0, device=next(self.model.parameters()).device)
        self.reset()
        return rest
