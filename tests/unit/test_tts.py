"""dia2.generation.tts: `Dia2.from_repo`'s loading options on the tiny bundle: adapters, low-VRAM,
tokenizer and codec sources, a model folder given by its files."""

import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.generation.sampling import SamplingConfig
from dia2.generation.tts import Dia2
from dia2.text.tokenizer import TokenizerError, load_tokenizer, tokenizer_source
from tests.helpers.adapters import save_random_adapter

GREEDY = GenerationConfig(seed=0, text=SamplingConfig(0.0, 1), audio=SamplingConfig(0.0, 1))
SCRIPT = "[S1] Hello there, how are you?"


@pytest.fixture(scope="module")
def voice_adapter(tiny_bundle_dir, tmp_path_factory):
    base = Dia2.from_repo(tiny_bundle_dir, device="cpu")
    return save_random_adapter(tmp_path_factory.mktemp("voice") / "adapter", base.model.config, seed=5)


def test_adapter_changes_the_voice_and_merged_equals_unmerged(tiny_tts, tiny_bundle_dir, voice_adapter):
    merged = Dia2.from_repo(tiny_bundle_dir, device="cpu", adapter=voice_adapter)
    unmerged = Dia2.from_repo(tiny_bundle_dir, device="cpu", adapter=voice_adapter, merge_adapter=False)
    base = tiny_tts.generate(SCRIPT, GREEDY).audio_tokens
    a = merged.generate(SCRIPT, GREEDY).audio_tokens
    b = unmerged.generate(SCRIPT, GREEDY).audio_tokens
    assert not torch.equal(a, base)
    n = min(a.shape[1], b.shape[1])
    agree = (a[:, :n] == b[:, :n]).float().mean().item()
    assert agree > 0.99, agree  # float rounding of merged weights may flip a rare near-tie
    # The unmerged handle switches the voice off without reloading: back to the base model.
    with unmerged.model.disabled():
        assert torch.equal(unmerged.generate(SCRIPT, GREEDY).audio_tokens, base)


def test_bad_adapter_path_is_refused(tiny_bundle_dir, tmp_path):
    from dia2.model.adapters import AdapterError

    with pytest.raises(AdapterError):
        Dia2.from_repo(tiny_bundle_dir, device="cpu", adapter=tmp_path / "missing")


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_low_vram_generation_runs_on_cpu(tiny_bundle_dir, mode):
    tts = Dia2.from_repo(tiny_bundle_dir, device="cpu", low_vram=mode)
    result = tts.generate(SCRIPT, GenerationConfig(seed=0))
    assert result.audio_tokens.shape[1] > 10 and not result.truncated
    assert [w for w, _ in result.timestamps] == ["Hello", "there,", "how", "are", "you?"]


def test_tokenizer_source_order(tiny_bundle_dir):
    from dia2.model.assets import ModelSource

    local = ModelSource.resolve(tiny_bundle_dir)
    assert tokenizer_source(local, None, None) == str(tiny_bundle_dir)
    assert tokenizer_source(local, "mimi", "x/y") == str(tiny_bundle_dir / "mimi")  # a folder inside the repo
    assert tokenizer_source(local, None, "org/tok") == "org/tok"
    assert tokenizer_source(local, "org/a", "org/b") == "org/a"  # the manifest wins


def test_tokenizer_load_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError, match="holds no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(TokenizerError, match="is a file"):
        load_tokenizer(tmp_path / "f.txt")
    with pytest.raises(TokenizerError, match="HF_HUB_OFFLINE is set"):
        load_tokenizer("nobody/no-such-tokenizer")


def test_tiny_tokenizer_has_dia2_control_tokens(tiny_tts):
    assert tiny_tts.ids.bos == 1  # the tokenizer reports bos 0; `Dia2` uses 1, as published
    assert tiny_tts.ids.spk1 != tiny_tts.ids.spk2
    assert tiny_tts.tokenizer.encode("[S1] hi", add_special_tokens=False)[0] == tiny_tts.ids.spk1


def test_codec_with_the_wrong_codebook_count_is_refused(tiny_tts):
    from dia2.audio.codec import MimiCodec
    from dia2.tiny import build_tiny_mimi

    with pytest.raises(ValueError, match="expects 8"):
        Dia2(tiny_tts.model, tiny_tts.tokenizer, MimiCodec(build_tiny_mimi(num_codebooks=4)))


def test_tiny_geometry_matches_the_shipped_config():
    from dia2.model.config import load_config, parse_config
    from dia2.tiny import TINY_GEOMETRY
    from tests.conftest import MODEL_CONFIGS

    assert parse_config(TINY_GEOMETRY) == load_config(MODEL_CONFIGS / "tiny.json")


def test_low_vram_with_an_unmerged_adapter_is_refused(tiny_bundle_dir, voice_adapter):
    with pytest.raises(ValueError, match="needs the adapter merged"):
        Dia2.from_repo(tiny_bundle_dir, device="cpu", low_vram="4bit", adapter=voice_adapter, merge_adapter=False)


def test_a_model_folder_given_by_config_and_weights_brings_its_tokenizer_and_mimi(tiny_tts, tiny_bundle_dir, tmp_path):
    import shutil

    merged = tmp_path / "merged"
    shutil.copytree(tiny_bundle_dir, merged)
    # The default repo (nari-labs/Dia2-2B) is not reachable here: only the folder's assets can load.
    tts = Dia2.from_repo(config_path=merged / "config.json", weights_path=merged / "model.safetensors", device="cpu")
    assert tts.codec.fingerprint == tiny_tts.codec.fingerprint
    assert tts.tokenizer.encode("[S1] hello there") == tiny_tts.tokenizer.encode("[S1] hello there")


def test_a_codec_that_cannot_load_names_the_mimi_flag(tiny_bundle_dir, tmp_path):
    from dia2.audio.codec import CodecError

    with pytest.raises(CodecError, match=r"given with --mimi; pass --mimi \(Python: mimi=\)"):
        Dia2.from_repo(tiny_bundle_dir, device="cpu", mimi=str(tmp_path / "no-mimi"))
