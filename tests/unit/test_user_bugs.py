"""Bugs a new user hit (issue 15), each reproduced on the tiny model."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.text.words import SpokenWord
from tests.unit.test_prefix import ScriptedTranscriber, _speech

SCRIPT = "[S1] Now with a voice. [S2] And me."


def _one_speaker(tts):
    t = ScriptedTranscriber([SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)])
    return tts.make_prefix(_speech(1.2), transcriber=t)


def _two_speakers(tts):
    t = ScriptedTranscriber(
        [SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)],
        [SpokenWord("how", 0.20, 0.40), SpokenWord("are", 0.50, 0.70)],
    )
    return tts.make_prefix(_speech(1.5), _speech(1.0, seed=1), transcriber=t)


def _streamed(tts, pieces, config, voice):
    chunks = list(tts.stream(iter(pieces), config, prefix=voice))
    codes = torch.cat([c.codes for c in chunks], dim=1)
    words = [w for c in chunks for w in c.words]
    return codes, words


@pytest.mark.parametrize("make_voice", [_one_speaker, _two_speakers], ids=["one-speaker", "two-speakers"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0], ids=["no-cfg", "cfg"])
def test_streamed_text_with_a_voice_gives_the_audio_of_generate(tiny_tts, make_voice, cfg_scale):
    voice = make_voice(tiny_tts)
    config = GenerationConfig(seed=0, cfg_scale=cfg_scale)
    whole = tiny_tts.generate(SCRIPT, config, prefix=voice)
    for pieces in ([SCRIPT], ["[S1] Now with", " a voice. [S2]", " And me."]):
        codes, words = _streamed(tiny_tts, pieces, config, voice)
        assert torch.equal(codes, whole.audio_tokens), pieces
        assert words == whole.timestamps


# --- bug 3: "tiny" names the embedded model wherever a model is named -----------------------------


@pytest.fixture
def embedded_tiny(tiny_bundle_dir, tmp_path, monkeypatch):
    """A cache whose tiny bundle is the session's (no rebuild)."""
    from dia2.tiny import BUNDLE_VERSION

    (tmp_path / f"tiny-v{BUNDLE_VERSION}-seed0").symlink_to(tiny_bundle_dir, target_is_directory=True)
    monkeypatch.setenv("DIA2_CACHE", str(tmp_path))
    return tiny_bundle_dir


def test_tiny_is_a_model_source_for_the_python_api_and_data_prep(embedded_tiny):
    from data_prep.config import ModelOptions
    from data_prep.pipeline import load_prep_model
    from dia2.generation.runtime import Dia2
    from dia2.model.assets import ModelSource

    source = ModelSource.resolve("tiny")
    assert source.is_local and source.name == "tiny" and Path(source.location).resolve() == embedded_tiny.resolve()
    tts = Dia2.from_repo("tiny", device="cpu")
    assert tts.model.name_or_path == "tiny"
    config = GenerationConfig(seed=0, max_frames=40)
    by_path = Dia2.from_repo(embedded_tiny, device="cpu")
    assert torch.equal(tts.generate("[S1] Hi.", config).audio_tokens, by_path.generate("[S1] Hi.", config).audio_tokens)
    prep = load_prep_model(ModelOptions(model="tiny", device="cpu"))
    # The corpus meta names the codec and tokenizer, not the cache folder they sit in.
    assert (prep.codec_source, prep.tokenizer_source) == ("tiny/mimi", "tiny")


def test_a_model_that_is_no_source_names_the_tiny_spelling(tmp_path):
    from dia2.model.assets import AssetError, ModelSource

    with pytest.raises(AssetError, match="neither an existing folder nor a Hub repo id .*'tiny'"):
        ModelSource.resolve(str(tmp_path / "nope"))


# --- bug 4: a device this machine lacks is one clear error naming the flag -----------------------


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "--device cuda: CUDA is not available .*; this machine has: cpu"),
        ("cuda:3", "--device cuda:3: .*this machine has: cpu"),
        ("gpu", "--device gpu: not a device name; this machine has: cpu"),
    ],
)
def test_a_missing_device_is_refused_before_anything_loads(device, message, monkeypatch):
    import dia2.device
    from dia2.device import DeviceError, resolve_device
    from dia2.errors import Dia2Error
    from dia2.generation.runtime import Dia2

    monkeypatch.setattr(dia2.device.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=message) as caught:
        resolve_device(device)
    assert isinstance(caught.value, Dia2Error) and "\n" not in str(caught.value)
    # Refused before any file is looked at: this folder does not exist.
    with pytest.raises(DeviceError, match=message):
        Dia2.from_repo("/nonexistent/model", device=device)


def test_data_prep_refuses_a_missing_asr_device_before_loading_the_model(tmp_path, monkeypatch):
    import data_prep.pipeline
    import dia2.device
    from data_prep.config import AsrOptions, PrepConfig
    from dia2.device import DeviceError

    monkeypatch.setattr(dia2.device.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(data_prep.pipeline, "load_prep_model", lambda options: pytest.fail("model loaded"))
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "a.wav").write_bytes(b"")
    config = PrepConfig(input=audio, output=tmp_path / "out", asr=AsrOptions(asr_device="cuda"))
    with pytest.raises(DeviceError, match="--asr-device cuda: CUDA is not available"):
        data_prep.pipeline.run_prep(config)


def test_auto_and_cpu_devices_resolve():
    from dia2.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- script messages and streamed pieces ---------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "fix"),
    [("[S1] Hello there.[S2] Hi.", "put a space before [S2]"), ("[S1]Hello there.", "put a space after [S1]"),
     ("[S1] Hi.[S2]there", "put a space before and after [S2]")],
)
def test_a_glued_speaker_tag_says_on_which_side_the_space_is_missing(tiny_tts, script, fix):
    from dia2.text.script import ScriptError

    with pytest.raises(ScriptError, match=re.escape(fix)):
        tiny_tts.parse(script)


def test_streamed_pieces_are_joined_without_spaces_and_a_bad_start_fails_before_any_audio(tiny_tts):
    from dia2.text.script import ScriptError

    config = GenerationConfig(seed=0, max_frames=60)
    joined = tiny_tts.generate("[S1] Hi there. [S2] Hello.", config)
    codes, _ = _streamed(tiny_tts, ["[S1] Hi", " there. ", "[S2] Hel", "lo."], config, None)
    assert torch.equal(codes, joined.audio_tokens)
    chunks = tiny_tts.stream(iter(["[S1] Hi there.", "[S2] Hello."]), config)
    with pytest.raises(ScriptError, match=r"put a space before \[S2\] \(streamed pieces are joined as given"):
        next(chunks)


# --- adapters: what a wrong folder holds, and an adapter on another base --------------------------


@pytest.fixture
def saved_adapter(tmp_path):
    from dia2.model.config import parse_config
    from tests.conftest import tiny_raw_config
    from tests.unit.test_adapters import _save_random_adapter

    cfg = parse_config(tiny_raw_config())
    return cfg, _save_random_adapter(cfg, tmp_path / "run" / "adapter", base_name="nari-labs/Dia2-2B")


def test_a_run_folder_or_a_bin_adapter_is_refused_naming_what_to_pass(saved_adapter, tmp_path):
    from dia2.model.adapters import AdapterError, resolve_adapter

    _, adapter = saved_adapter
    with pytest.raises(AdapterError, match=re.escape(f"pass its adapter folder, '{tmp_path / 'run' / 'adapter'}'")):
        resolve_adapter(tmp_path / "run")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(AdapterError, match="holds adapter_model.bin .*not adapter_model.safetensors"):
        resolve_adapter(adapter)


def test_an_adapter_applied_to_another_base_warns(saved_adapter, caplog):
    from dia2.model.adapters import load_adapter
    from dia2.model.network import Dia2Model

    cfg, adapter = saved_adapter
    model = Dia2Model.from_config(cfg)
    model.name_or_path = "merged"
    with caplog.at_level("WARNING", logger="dia2.model.adapters"):
        load_adapter(model, adapter)
    assert "trained on base 'nari-labs/Dia2-2B' but is applied to 'merged'" in caplog.text
    caplog.clear()
    same = Dia2Model.from_config(cfg)
    same.name_or_path = "nari-labs/Dia2-2B"
    with caplog.at_level("WARNING", logger="dia2.model.adapters"):
        load_adapter(same, adapter)
    assert "applied to" not in caplog.text


# --- voices record their codec --------------------------------------------------------------------


def test_a_voice_made_with_another_codec_is_refused(tiny_tts, tmp_path):
    from dia2.generation.prefix import PrefixError, VoicePrefix
    from dia2.generation.voice import Voice, read_voice, write_voice

    voice = _one_speaker(tiny_tts)
    assert voice.codec_fingerprint == tiny_tts.codec.fingerprint
    stored = read_voice(write_voice(Voice(prefix=voice), tmp_path / "v")).prefix
    assert torch.equal(stored.codes, voice.codes) and stored.codec_fingerprint == tiny_tts.codec.fingerprint
    other = VoicePrefix(stored.codes, stored.words, "another-mimi")
    with pytest.raises(PrefixError, match="made with another Mimi codec .*--mimi"):
        tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0), prefix=other)
    # A voice stored before fingerprints were recorded is still accepted.
    tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0, max_frames=40), prefix=VoicePrefix(stored.codes, stored.words))


# --- max_frames is capped at the model's context --------------------------------------------------


def test_max_frames_past_the_context_is_capped_and_the_hints_fit_the_limit(tiny_tts, caplog):
    from dia2.text.script import ScriptError

    context = tiny_tts.model.config.runtime.max_context_steps
    with caplog.at_level("WARNING", logger="dia2.generation.runtime"):
        loop = tiny_tts._loop(tiny_tts.parse("[S1] Hi."), GenerationConfig(max_frames=context + 2500), None, None)
    assert loop.capacity == 1 + context and f"past the model's context of {context} frames" in caplog.text
    with pytest.raises(ScriptError, match=f"or raise max_frames \\(--max-frames, up to the model's context of {context}\\)"):
        tiny_tts.generate("[S1] " + "word " * 20, GenerationConfig(max_frames=20))
    with pytest.raises(ScriptError, match="split it into shorter scripts$"):
        tiny_tts.generate("[S1] " + "word " * 1000, GenerationConfig(max_frames=context + 2500))


def test_a_model_folder_given_by_config_and_weights_brings_its_tokenizer_and_mimi(tiny_tts, tiny_bundle_dir, tmp_path):
    import shutil

    from dia2.generation.runtime import Dia2

    merged = tmp_path / "merged"
    shutil.copytree(tiny_bundle_dir, merged)
    # The default repo (nari-labs/Dia2-2B) is not reachable here: only the folder's assets can load.
    tts = Dia2.from_repo(config_path=merged / "config.json", weights_path=merged / "model.safetensors", device="cpu")
    assert tts.codec.fingerprint == tiny_tts.codec.fingerprint
    assert tts.tokenizer.encode("[S1] hello there") == tiny_tts.tokenizer.encode("[S1] hello there")


def test_saved_weights_get_the_mode_of_any_new_file(tiny_tts, tmp_path):
    import os

    from dia2.model.checkpoint import save_model

    folder = save_model(tiny_tts.model, tmp_path / "m")
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == (folder / "config.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


# --- dia2-prep takes a single recording -----------------------------------------------------------


def test_data_prep_accepts_a_single_audio_file(tmp_path):
    from data_prep.config import SpeakerOptions
    from data_prep.sources import collect_sources

    (tmp_path / "other.wav").write_bytes(b"")
    one = tmp_path / "me.flac"
    one.write_bytes(b"")
    sources = collect_sources(one, SpeakerOptions(speakers=("me",)))
    assert [(f.path, f.name) for f in sources.files] == [(one, "me.flac")]
    assert sources.speaker_names == ("me",)


# --- the tiny-cpu preset's sample scripts fit its max_sample_seconds -------------------------------


def test_the_tiny_cpu_sample_scripts_fit_at_the_slowest_pace(tiny_tts):
    import math

    from finetune.config_file import load_config
    from tests.conftest import REPO_ROOT

    cfg = load_config(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml", ["data.corpus=unused"])
    limit = math.ceil(cfg.eval.max_sample_seconds * 12.5)
    machine = tiny_tts._loop(tiny_tts.parse("[S1] Hi."), GenerationConfig(), None, None).machine
    tail = max(tiny_tts.model.config.data.delays) + machine.max_padding
    for script in cfg.eval.scripts:
        # Each word: its forced pad frames, at most max_padding frames before the next word is forced.
        slowest = machine.initial_padding + sum(max(len(e.tokens), machine.max_padding) + 1 for e in tiny_tts.parse(script))
        assert slowest + tail + 1 <= limit, (script, slowest + tail + 1, limit)
        for seed in range(3):
            assert not tiny_tts.generate(script, GenerationConfig(seed=seed, max_frames=limit)).truncated


# --- errors about the codec and the ASR model name the flag that fixes them -----------------------


def test_codec_and_whisper_errors_name_their_flags(tiny_bundle_dir, tmp_path):
    from data_prep.config import AsrOptions
    from data_prep.transcribe import asr_transcriber
    from dia2.audio.asr import AsrError, WhisperTranscriber
    from dia2.audio.codec import CodecError
    from dia2.generation.runtime import Dia2

    with pytest.raises(CodecError, match=r"given with --mimi; pass --mimi \(Python: mimi=\)"):
        Dia2.from_repo(tiny_bundle_dir, device="cpu", mimi=str(tmp_path / "no-mimi"))
    with pytest.raises(AsrError, match="pass --whisper-model"):
        WhisperTranscriber(tmp_path / "no-whisper").transcribe(np.zeros(2400, np.float32), 24000)
    # The same wrapper in data prep names data prep's flag.
    with pytest.raises(AsrError, match="pass --asr-model with"):
        asr_transcriber(AsrOptions(asr_model=str(tmp_path / "no-whisper"))).load()


def test_the_streamed_joining_hint_is_given_only_for_glued_text(tiny_tts):
    from dia2.text.script import ScriptError, parse_stream

    def first_error(pieces: list[str]) -> str:
        with pytest.raises(ScriptError) as error:
            list(parse_stream(iter(pieces), tiny_tts.tokenizer, tiny_tts.ids))
        return str(error.value)

    assert "joined as given" in first_error(["[S1] Hi there.", "[S2] Hello."])
    unknown_tag = first_error(["[S1] Hi there. ", "[S3] Hello."])
    assert "[S3]" in unknown_tag and "joined as given" not in unknown_tag


def test_the_whisper_wrapper_checks_its_device_where_it_is_made():
    from dia2.audio.asr import WhisperTranscriber
    from dia2.device import DeviceError

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(DeviceError, match=r"^--asr-device cuda: CUDA is not available"):
        WhisperTranscriber(device="cuda", device_option="--asr-device")
    with pytest.raises(DeviceError, match=r"^--device gpu: not a device name"):
        WhisperTranscriber(device="gpu")
    assert WhisperTranscriber(device="auto").device == "cpu"
