"""The embedded tiny model (dia2.tiny): `tiny` names it wherever a model is named (issue 15, bug 3)."""

from pathlib import Path

import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.tiny import model_source


@pytest.fixture
def embedded_tiny(tiny_bundle_dir, tiny_cache, monkeypatch):
    """A cache whose tiny bundle is the session's (no rebuild)."""
    monkeypatch.setenv("DIA2_CACHE", str(tiny_cache))
    return tiny_bundle_dir


def test_tiny_is_a_model_source_for_the_python_api_and_data_prep(embedded_tiny):
    from data_prep.config import CorpusModelOptions
    from data_prep.work import load_prep_model
    from dia2.generation.tts import Dia2

    source = model_source("tiny")
    assert source.is_local and source.name == "tiny" and Path(source.location).resolve() == embedded_tiny.resolve()
    tts = Dia2.from_repo("tiny", device="cpu")
    assert tts.model.name_or_path == "tiny"
    config = GenerationConfig(seed=0, max_frames=40)
    by_path = Dia2.from_repo(embedded_tiny, device="cpu")
    assert torch.equal(tts.generate("[S1] Hi.", config).audio_tokens, by_path.generate("[S1] Hi.", config).audio_tokens)
    prep = load_prep_model(CorpusModelOptions(model="tiny", device="cpu"))
    # The corpus meta names the codec and tokenizer, not the cache folder they sit in.
    assert (prep.codec_source, prep.tokenizer_source) == ("tiny/mimi", "tiny")


def test_only_model_source_builds_the_tiny_model_and_the_others_say_so(embedded_tiny):
    from dia2.model.assets import AssetError, ModelSource
    from dia2.model.network import Dia2Model

    hint = r"'tiny' names the embedded demo model.*Dia2\.from_repo\('tiny'\).*dia2\.tiny\.model_source\('tiny'\)"
    with pytest.raises(AssetError, match=hint):
        ModelSource.resolve("tiny")
    with pytest.raises(AssetError, match=hint):
        Dia2Model.from_pretrained("tiny")
    # Its folder loads like any other model folder.
    assert Dia2Model.from_pretrained(model_source("tiny").location).config.data.channels == 10
