"""MimiCodec on a tiny random Mimi: frame math, determinism, save/load, streaming, bad inputs."""

import math

import huggingface_hub.constants
import pytest
import torch

from dia2.audio.codec import CodecError, MimiCodec
from dia2.tiny import build_tiny_mimi

SPF = 1920  # samples per Mimi frame at 24 kHz / 12.5 Hz
# Measured on the tiny Mimi, 38 frames (past its 16-step attention window), chunks of 1/2/5:
# max |stream - one-shot| 2.7e-7 .. 3.0e-7 (SNR 127-129 dB), float rounding only (full-size
# Mimi: ~1e-6, 115 dB; bench/codec_stream.py). Two chunks swapped, or chunks decoded without
# carried state, err by ~0.5 (SNR ~10 dB).
STREAM_MAX_ABS_ERR = 1e-5
STREAM_MIN_SNR_DB = 100.0


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return MimiCodec(build_tiny_mimi(seed=0))


def speechlike(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """A sine sweep plus noise per item: enough structure that codes change over time."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 24000
    rows = [0.4 * torch.sin(2 * math.pi * (150 + 100 * b) * t * (1 + t)) for b in range(batch)]
    return torch.stack(rows) + 0.05 * torch.randn(batch, num_samples, generator=gen)


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (estimate - reference).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def test_codec_geometry(codec: MimiCodec) -> None:
    assert (codec.sample_rate, codec.frame_rate, codec.samples_per_frame) == (24000, 12.5, SPF)
    assert (codec.num_codebooks, codec.codebook_size) == (8, 2048)
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32


@pytest.mark.parametrize("num_samples", [1, SPF - 1, SPF, SPF + 1, 3 * SPF + 7])
def test_encode_decode_frame_math(codec: MimiCodec, num_samples: int) -> None:
    frames = math.ceil(num_samples / SPF)
    codes = codec.encode(speechlike(2, num_samples))
    assert codes.shape == (2, 8, frames) and codes.dtype == torch.long
    assert codec.num_frames(num_samples) == frames
    audio = codec.decode(codes)
    assert audio.shape == (2, frames * SPF) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1.0


def test_encode_accepts_mono_layouts_and_batches_independently(codec: MimiCodec) -> None:
    wav = speechlike(2, 4 * SPF)
    batched = codec.encode(wav)
    assert torch.equal(codec.encode(wav[1]), batched[1:])
    assert torch.equal(codec.encode(wav[:, None]), batched)
    # The zero tail padding is what a caller would add by hand.
    short = wav[:, : 3 * SPF + 5]
    assert torch.equal(codec.encode(short), codec.encode(torch.nn.functional.pad(short, (0, SPF - 5))))


def test_decode_accepts_unbatched_codes(codec: MimiCodec) -> None:
    codes = codec.encode(speechlike(1, 3 * SPF))
    assert torch.equal(codec.decode(codes[0]), codec.decode(codes))


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    rng = torch.get_rng_state()
    first, second = build_tiny_mimi(seed=3).state_dict(), build_tiny_mimi(seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_tiny_mimi(seed=4).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_codes_vary_in_every_codebook(codec: MimiCodec) -> None:
    codes = codec.encode(speechlike(1, 24000))[0]
    distinct = [codes[k].unique().numel() for k in range(codec.num_codebooks)]
    assert min(distinct) >= 4, distinct


def test_fewer_codebooks_are_a_prefix_of_all() -> None:
    model = build_tiny_mimi()
    wav = speechlike(1, 5 * SPF)
    full = MimiCodec(model).encode(wav)
    four = MimiCodec(model, num_codebooks=4)
    assert four.num_codebooks == 4
    assert torch.equal(four.encode(wav), full[:, :4])
    assert four.decode(full[:, :4]).shape == (1, 5 * SPF)
    with pytest.raises(ValueError, match="num_codebooks"):
        MimiCodec(model, num_codebooks=9)


def test_save_and_load_round_trip(codec: MimiCodec, tmp_path) -> None:
    codec.model.save_pretrained(tmp_path / "mimi")
    loaded = MimiCodec.from_pretrained(str(tmp_path / "mimi"))
    wav = speechlike(2, 6 * SPF)
    codes = codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_highest_code_id_decodes(codec: MimiCodec) -> None:
    codes = torch.full((1, 8, 2), 2047)
    assert torch.isfinite(codec.decode(codes)).all()


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.zeros(8, dtype=torch.long), "shape"),
        (torch.zeros(1, 1, 8, 3, dtype=torch.long), "shape"),
        (torch.zeros(1, 7, 3, dtype=torch.long), "7 codebooks"),
        (torch.full((1, 8, 3), 2048), r"\[0, 2048\)"),
        (torch.full((1, 8, 3), -1), r"\[0, 2048\)"),
        (torch.zeros(1, 8, 3), "integers"),
    ],
)
def test_decode_rejects_bad_codes(codec: MimiCodec, codes: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.decode(codes)
    with pytest.raises(ValueError, match=message):
        codec.stream_decoder().push(codes)


@pytest.mark.parametrize(
    "waveform, message",
    [
        (torch.zeros(1, 2, SPF), "mono"),
        (torch.zeros(1, 1, 1, SPF), "mono"),
        (torch.zeros(1, SPF, dtype=torch.int16), "floating"),
        (torch.zeros(1, 0), "empty"),
        (torch.full((1, SPF), float("nan")), "NaN"),
    ],
)
def test_encode_rejects_bad_waveforms(codec: MimiCodec, waveform: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.encode(waveform)


def test_missing_folder_gives_codec_error(tmp_path) -> None:
    missing = tmp_path / "no-mimi-here"
    with pytest.raises(CodecError, match="no-mimi-here"):
        MimiCodec.from_pretrained(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecError, match="save_pretrained"):
        MimiCodec.from_pretrained(str(tmp_path / "empty"))


def test_incomplete_checkpoint_gives_codec_error(codec: MimiCodec, tmp_path) -> None:
    """transformers would fill the missing decoder randomly and only warn; the codec refuses."""
    from safetensors.torch import load_file, save_file

    codec.model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    encoder_only = {k: v for k, v in weights.items() if "decoder" not in k}
    save_file(encoder_only, tmp_path / "model.safetensors", {"format": "pt"})
    with pytest.raises(CodecError, match="lacks"):
        MimiCodec.from_pretrained(str(tmp_path))


def test_other_geometry_gives_codec_error(tmp_path) -> None:
    build_tiny_mimi().save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 64')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CodecError, match=str(tmp_path)):
        MimiCodec.from_pretrained(str(tmp_path))


@pytest.mark.skipif(not huggingface_hub.constants.HF_HUB_OFFLINE, reason="needs HF_HUB_OFFLINE=1 (set by conftest)")
def test_uncached_repo_offline_gives_codec_error() -> None:
    with pytest.raises(CodecError, match="HF_HUB_OFFLINE") as info:
        MimiCodec.from_pretrained("dia2-tests/no-such-mimi")
    assert "dia2-tests/no-such-mimi" in str(info.value)


@pytest.fixture(scope="module")
def long_codes(codec: MimiCodec) -> torch.Tensor:
    """38 frames for batch 2: 76 decoder-transformer steps, well past the tiny 16-step window."""
    return codec.encode(speechlike(2, 3 * 24000 + 123))


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_stream_matches_one_shot(codec: MimiCodec, long_codes: torch.Tensor, chunk: int) -> None:
    reference = codec.decode(long_codes)
    stream = codec.stream_decoder(batch_size=2)
    pieces = []
    for start in range(0, long_codes.shape[-1], chunk):
        piece = stream.push(long_codes[..., start : start + chunk])
        assert piece.shape == (2, long_codes[..., start : start + chunk].shape[-1] * SPF)
        pieces.append(piece)
    pieces.append(stream.flush())
    audio = torch.cat(pieces, dim=-1)
    assert audio.shape == reference.shape
    assert (audio - reference).abs().max() <= STREAM_MAX_ABS_ERR
    assert snr_db(reference, audio) >= STREAM_MIN_SNR_DB


def test_stream_irregular_chunks_and_restart_after_flush(codec: MimiCodec, long_codes: torch.Tensor) -> None:
    reference = codec.decode(long_codes[:1])
    stream = codec.stream_decoder()
    for _ in range(2):  # flush resets, so a second stream on the same decoder gives the same audio
        bounds = [0, 3, 4, 11, 11, 12, 30, long_codes.shape[-1]]
        pieces = [stream.push(long_codes[:1, :, a:b]) for a, b in zip(bounds, bounds[1:])]
        assert stream.frames_decoded == long_codes.shape[-1]
        pieces.append(stream.flush())
        assert pieces[-1].shape == (1, 0) and stream.frames_decoded == 0
        assert (torch.cat(pieces, dim=-1) - reference).abs().max() <= STREAM_MAX_ABS_ERR


def test_tolerance_catches_a_stream_without_carried_state(codec: MimiCodec, long_codes: torch.Tensor) -> None:
    """The thresholds above are tight enough to fail a decoder that drops state or misorders chunks."""
    reference = codec.decode(long_codes)
    stateless = []
    for start in range(0, long_codes.shape[-1], 2):
        stateless.append(codec.stream_decoder(batch_size=2).push(long_codes[..., start : start + 2]))
    stateless_audio = torch.cat(stateless, dim=-1)
    stream = codec.stream_decoder(batch_size=2)
    swapped = [stream.push(long_codes[..., s : s + 2]) for s in range(0, long_codes.shape[-1], 2)]
    swapped[3], swapped[4] = swapped[4], swapped[3]
    for broken in (stateless_audio, torch.cat(swapped, dim=-1)):
        assert (broken - reference).abs().max() > 100 * STREAM_MAX_ABS_ERR
        assert snr_db(reference, broken) < STREAM_MIN_SNR_DB - 50


def test_stream_rejects_wrong_batch(codec: MimiCodec, long_codes: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="batch 1"):
        codec.stream_decoder(batch_size=1).push(long_codes[..., :2])
    with pytest.raises(ValueError, match="batch_size"):
        codec.stream_decoder(batch_size=0)
