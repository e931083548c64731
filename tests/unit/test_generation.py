"""Generation on the tiny default: determinism, end of speech, timestamps, streaming, CFG."""

import numpy as np
import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.generation.sampling import SamplingConfig
from dia2.text.script import ScriptError
from tests.helpers.speech import one_speaker_prefix, two_speaker_prefix

SCRIPT = "[S1] Hello there, how are you? [S2] I am doing well. <break time=\"0.4s\"/> [S1] Good."


def test_seeded_generation_is_deterministic(tiny_tts):
    a = tiny_tts.generate(SCRIPT, GenerationConfig(seed=3))
    b = tiny_tts.generate(SCRIPT, GenerationConfig(seed=3))
    c = tiny_tts.generate(SCRIPT, GenerationConfig(seed=4))
    assert torch.equal(a.audio_tokens, b.audio_tokens)
    assert np.array_equal(a.waveform, b.waveform)
    assert not torch.equal(a.audio_tokens, c.audio_tokens) or a.audio_tokens.shape != c.audio_tokens.shape


def test_stops_at_end_of_speech_well_before_the_limit(tiny_tts):
    result = tiny_tts.generate(SCRIPT, GenerationConfig(seed=0))
    K, frames = result.audio_tokens.shape
    assert K == 8 and not result.truncated
    assert 20 < frames < 200, frames  # the limit is 1500 frames
    assert result.waveform.shape == (frames * 1920,)
    assert result.sample_rate == 24000 and np.abs(result.waveform).max() <= 1.0
    assert (result.audio_tokens < 2048).all()


def test_every_word_is_timestamped_in_order(tiny_tts):
    result = tiny_tts.generate(SCRIPT, GenerationConfig(seed=0))
    words = [w for w, _ in result.timestamps]
    assert words == ["Hello", "there,", "how", "are", "you?", "I", "am", "doing", "well.", "Good."]
    times = [t for _, t in result.timestamps]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < result.duration


def test_stream_produces_the_same_tokens_and_audio_as_generate(tiny_tts):
    whole = tiny_tts.generate(SCRIPT, GenerationConfig(seed=5))
    chunks = list(tiny_tts.stream(SCRIPT, GenerationConfig(seed=5)))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert torch.equal(torch.cat([c.codes for c in chunks], dim=1), whole.audio_tokens)
    streamed = np.concatenate([c.waveform for c in chunks])
    assert streamed.shape == whole.waveform.shape
    np.testing.assert_allclose(streamed, whole.waveform, atol=1e-4)
    assert [w for c in chunks for w in c.words] == whole.timestamps
    # Audio arrives progressively, not all at the end.
    assert sum(1 for c in chunks if len(c.waveform)) > 10


def test_text_fed_piece_by_piece_gives_the_same_result(tiny_tts):
    whole = tiny_tts.generate(SCRIPT, GenerationConfig(seed=7))
    pulled = []

    def pieces():
        for i in range(0, len(SCRIPT), 5):
            pulled.append(i)
            yield SCRIPT[i : i + 5]

    chunks = list(tiny_tts.stream(pieces(), GenerationConfig(seed=7)))
    assert torch.equal(torch.cat([c.codes for c in chunks], dim=1), whole.audio_tokens)
    assert [w for c in chunks for w in c.words] == whole.timestamps


def test_streamed_text_starts_speaking_before_the_script_is_known(tiny_tts):
    seen_before_first_audio = []
    pulled = []

    def pieces():
        for word in SCRIPT.split(" "):
            pulled.append(word)
            yield word + " "

    for chunk in tiny_tts.stream(pieces(), GenerationConfig(seed=1)):
        if chunk.words:
            seen_before_first_audio.append(len(pulled))
            break
    assert seen_before_first_audio and seen_before_first_audio[0] < len(SCRIPT.split(" "))


def test_cfg_scale_one_runs_no_unconditional_branch(tiny_tts, monkeypatch):
    batches = []
    real_step = tiny_tts.model.step

    def spy(tokens, state):
        batches.append(tokens.shape[0])
        return real_step(tokens, state)

    monkeypatch.setattr(tiny_tts.model, "step", spy)
    tiny_tts.generate("[S1] Hello there.", GenerationConfig(seed=0, cfg_scale=1.0))
    assert batches and set(batches) == {1}
    batches.clear()
    tiny_tts.generate("[S1] Hello there.", GenerationConfig(seed=0, cfg_scale=3.0))
    assert set(batches) == {2}


def test_greedy_generation_matches_the_teacher_forced_forward(tiny_tts):
    """The loop feeds the model exactly the grid it decoded: re-running that grid through the
    training forward reproduces every greedy choice of the depformer."""
    cfg = GenerationConfig(seed=0, cfg_scale=1.0, text=SamplingConfig(0.0, 1), audio=SamplingConfig(0.0, 1))
    loop = tiny_tts._loop(tiny_tts.parse("[S1] Hello there, how are you?"), cfg, None, None)
    with torch.inference_mode():
        for _ in loop:
            pass
        last = loop.last_column
        grid = loop._columns(0, last + 1)
        out = tiny_tts.model(grid)
    delays = torch.tensor(tiny_tts.model.config.data.delays)
    for t in range(last):
        free = (t + 1) >= delays[1:]  # codebooks the loop sampled (not bos) at column t+1
        predicted = out.depformer_logits[0, t].argmax(-1)
        assert torch.equal(predicted[free], grid[0, 3:, t + 1][free]), t


def test_a_frame_limit_too_small_for_one_word_is_refused(tiny_tts):
    """Long scripts are spoken in parts (test_long_form.py), but no part fits a 10-frame limit."""
    with pytest.raises(ScriptError, match="needs at least .* frames but the limit is 11 .*raise max_frames"):
        tiny_tts.generate("[S1] Hello there, friend.", GenerationConfig(seed=0, max_frames=10))


def test_frame_limit_truncates_with_a_flag(tiny_tts, caplog):
    script = "[S1] Hello there, how are you?"
    full = tiny_tts.generate(script, GenerationConfig(seed=0))
    assert not full.truncated
    limit = full.audio_tokens.shape[1] - 2
    cut = tiny_tts.generate(script, GenerationConfig(seed=0, max_frames=limit))
    # 1 prefilled column + `limit` generated; the last 3 (max delay) columns complete no frame.
    assert cut.truncated and cut.audio_tokens.shape[1] == 1 + limit - 3 < full.audio_tokens.shape[1]
    assert torch.equal(cut.audio_tokens, full.audio_tokens[:, : cut.audio_tokens.shape[1]])
    assert "output truncated" in caplog.text


@pytest.mark.parametrize("script,message", [
    ("", "empty"),
    ("   ", "empty"),
    ("[S3] hello", "S3"),
    ("hello <foo/> world", "foo"),
])
def test_bad_scripts(tiny_tts, script, message):
    with pytest.raises(ScriptError, match=message):
        tiny_tts.generate(script)


@pytest.mark.parametrize("kwargs,message", [
    (dict(cfg_scale=0), "cfg_scale"),
    (dict(cfg_filter_k=0), "cfg_filter_k"),
    (dict(max_frames=0), "max_frames"),
    (dict(initial_padding=-1), "initial_padding"),
])
def test_bad_generation_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


# --- streamed text (issue 15) ----------------------------------------------------------------------

VOICED_SCRIPT = "[S1] Now with a voice. [S2] And me."


def _streamed(tts, pieces, config, voice):
    chunks = list(tts.stream(iter(pieces), config, prefix=voice))
    codes = torch.cat([c.codes for c in chunks], dim=1)
    words = [w for c in chunks for w in c.words]
    return codes, words


@pytest.mark.parametrize("make_prefix", [one_speaker_prefix, two_speaker_prefix], ids=["one-speaker", "two-speakers"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0], ids=["no-cfg", "cfg"])
def test_streamed_text_with_a_voice_gives_the_audio_of_generate(tiny_tts, make_prefix, cfg_scale):
    voice = make_prefix(tiny_tts)
    config = GenerationConfig(seed=0, cfg_scale=cfg_scale)
    whole = tiny_tts.generate(VOICED_SCRIPT, config, prefix=voice)
    for pieces in ([VOICED_SCRIPT], ["[S1] Now with", " a voice. [S2]", " And me."]):
        codes, words = _streamed(tiny_tts, pieces, config, voice)
        assert torch.equal(codes, whole.audio_tokens), pieces
        assert words == whole.timestamps


def test_streamed_pieces_are_joined_without_spaces_and_a_bad_start_fails_before_any_audio(tiny_tts):
    from dia2.text.script import ScriptError

    config = GenerationConfig(seed=0, max_frames=60)
    joined = tiny_tts.generate("[S1] Hi there. [S2] Hello.", config)
    codes, _ = _streamed(tiny_tts, ["[S1] Hi", " there. ", "[S2] Hel", "lo."], config, None)
    assert torch.equal(codes, joined.audio_tokens)
    chunks = tiny_tts.stream(iter(["[S1] Hi there.", "[S2] Hello."]), config)
    with pytest.raises(ScriptError, match=r"put a space before \[S2\] \(streamed pieces are joined as given"):
        next(chunks)


def test_max_frames_past_the_context_is_capped_and_the_hints_fit_the_limit(tiny_tts, caplog):
    from dia2.text.script import ScriptError

    context = tiny_tts.model.config.runtime.max_context_steps
    with caplog.at_level("WARNING", logger="dia2.generation.tts"):
        loop = tiny_tts._loop(tiny_tts.parse("[S1] Hi."), GenerationConfig(max_frames=context + 2500), None, None)
    assert loop.capacity == 1 + context and f"past the model's context of {context} frames" in caplog.text
    with pytest.raises(ScriptError, match=f"or raise max_frames \\(--max-frames, up to the model's context of {context}\\)"):
        tiny_tts.generate("[S1] " + "word " * 20, GenerationConfig(max_frames=20))
    with pytest.raises(ScriptError, match="split it into shorter scripts$"):
        tiny_tts.generate("[S1] " + "word " * 1000, GenerationConfig(max_frames=context + 2500))
