import copy
import json

import pytest

from dia2.model.config import ConfigError, load_config, parse_config
from tests.conftest import MODEL_CONFIGS, tiny_raw_config


@pytest.mark.parametrize("name", ["tiny", "dia2-1b", "dia2-2b"])
def test_shipped_geometries_load(name):
    cfg = load_config(MODEL_CONFIGS / f"{name}.json")
    assert cfg.num_codebooks == cfg.data.channels - 2
    assert len(cfg.runtime.weights_schedule) == cfg.num_depformer_stages


def test_published_values():
    cfg = load_config(MODEL_CONFIGS / "dia2-2b.json")
    assert cfg.data.delay_pattern == (16,) + (18,) * 31
    assert (cfg.data.audio_bos_token_id, cfg.data.audio_pad_token_id) == (2048, 2049)
    assert cfg.depformer_logit_size == 2048
    assert cfg.runtime.weights_schedule[0] == 0 and cfg.runtime.weights_schedule[-1] == 4
    assert set(cfg.runtime.weights_schedule) == {0, 1, 2, 3, 4}
    assert set(load_config(MODEL_CONFIGS / "dia2-1b.json").runtime.weights_schedule) == {0, 1, 2}


def _minimal() -> dict:
    return {
        "data": {
            "channels": 6, "text_vocab_size": 100, "audio_vocab_size": 50, "action_vocab_size": 2,
            "text_pad_token_id": 3, "text_new_word_token_id": 2, "action_pad_token_id": 0,
            "action_new_word_token_id": 1,
        },
        "model": {
            "decoder": {"n_layer": 1, "n_embd": 8, "n_hidden": 16, "gqa_query_heads": 2, "kv_heads": 1, "gqa_head_dim": 4},
            "depformer": {"n_layer": 1, "n_embd": 8, "n_hidden": 16, "gqa_query_heads": 2, "kv_heads": 2, "gqa_head_dim": 4},
        },
        "runtime": {},
    }


def test_defaults_of_spec_section_2():
    cfg = parse_config(_minimal())
    d = cfg.data
    assert (d.text_zero_token_id, d.audio_pad_token_id, d.audio_bos_token_id) == (7, 49, 48)
    assert (d.delay_pattern, d.first_word_min_start, d.max_pad, d.second_stream_ahead, d.tokenizer_path) == ((), 0, 0, 0, None)
    assert cfg.model.decoder.low_rank_dim is None
    dep = cfg.model.depformer
    assert (dep.apply_rope, dep.text_embedding, dep.mlp_activations) == (True, True, ("silu", "linear"))
    m = cfg.model
    assert (m.mlp_activations, m.dropout, m.rope_min_timescale, m.rope_max_timescale) == (("silu", "linear"), 0, 1, 10000)
    assert m.normalization_layer_epsilon == 1e-5
    assert cfg.runtime.weights_schedule == (0, 1, 2)  # list(range(channels - 3))
    assert cfg.runtime.max_context_steps == 1500
    assert (cfg.assets.tokenizer, cfg.assets.mimi) == (None, "kyutai/mimi")


def test_tokenizer_falls_back_to_data_tokenizer_path_and_unknown_keys_are_ignored():
    raw = _minimal()
    raw["data"]["tokenizer_path"] = "some/tok"
    raw["future_block"] = {"x": 1}
    raw["data"]["future_key"] = 3
    assert parse_config(raw).assets.tokenizer == "some/tok"
    raw["assets"] = {"tokenizer": "other/tok", "mimi": "me/mimi"}
    cfg = parse_config(raw)
    assert (cfg.assets.tokenizer, cfg.assets.mimi) == ("other/tok", "me/mimi")


def test_round_trip_through_to_dict():
    cfg = parse_config(tiny_raw_config(schedule=[0, 1, 1, 2], text_embedding=True))
    assert parse_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _edit(path: str, value):
    raw = _minimal()
    node = raw
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()

BAD_CONFIGS = [
    ("runtime", _DELETE, "missing required block 'runtime'"),
    ("model", _DELETE, "missing required block 'model'"),
    ("model.depformer", _DELETE, "missing required block 'model.depformer'"),
    ("data.channels", _DELETE, "missing required key 'data.channels'"),
    ("data.text_pad_token_id", _DELETE, "missing required key 'data.text_pad_token_id'"),
    ("model.decoder.kv_heads", _DELETE, "missing required key 'model.decoder.kv_heads'"),
    ("data.channels", "six", "'data.channels' must be an integer"),
    ("data.delay_pattern", [0, 1, 2], "data.delay_pattern has 3 entries but data.channels - 2 = 4"),
    ("runtime.weights_schedule", [0, 1], "runtime.weights_schedule has 2 entries but data.channels - 3 = 3"),
    ("runtime.weights_schedule", [0, 2, 2], "runtime.weights_schedule skips weight group(s) [1]"),
    ("model.decoder.kv_heads", 4, "model.decoder.gqa_query_heads = 2 is not divisible by model.decoder.kv_heads = 4"),
    ("model.depformer.kv_heads", 3, "model.depformer.gqa_query_heads = 2 is not divisible by model.depformer.kv_heads = 3"),
    ("model.decoder.gqa_head_dim", 5, "model.decoder.gqa_head_dim = 5 must be even"),
    ("model.depformer.gqa_head_dim", 7, "model.depformer.gqa_head_dim = 7 must be even"),
    ("model.depformer.apply_rope", "yes", "'model.depformer.apply_rope' must be true or false"),
    ("model.depformer.mlp_activations", ["swish", "linear"], "'model.depformer.mlp_activations' must be two names"),
    ("data.text_pad_token_id", 100, "data.text_pad_token_id = 100 is outside text_vocab_size 100"),
    ("data.audio_bos_token_id", 50, "data.audio_bos_token_id = 50 is outside audio_vocab_size 50"),
    ("model.decoder.n_layer", 0, "model.decoder.n_layer must be positive"),
]


@pytest.mark.parametrize("path,value,message", BAD_CONFIGS, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD_CONFIGS])
def test_each_violation_names_the_key(path, value, message):
    with pytest.raises(ConfigError) as err:
        parse_config(_edit(path, value))
    assert message in str(err.value)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    raw = copy.deepcopy(_minimal())
    del raw["runtime"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "'runtime'" in str(err.value)
