"""dia2.model.adapters: PEFT LoRA folders loaded merged or live, switchable, and refused on the wrong base."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from dia2.model.adapters import (
    DEFAULT_TARGET_MODULES,
    AdaptedModel,
    AdapterError,
    load_adapter,
)
from dia2.model.layers import CAN_PACK, pack_linears
from dia2.model.network import Dia2Model
from tests.conftest import random_tokens
from tests.helpers.adapters import save_random_adapter, tiny_model_config

ATOL = 1e-5
FRAMES = 8


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return Dia2Model.from_config(tiny_model_config()).eval()


@pytest.fixture(scope="module")
def tokens(base):
    return random_tokens(base.config, 2, FRAMES, seed=2)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    return save_random_adapter(tmp_path_factory.mktemp("adapter") / "voice")


def _logits(model, tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(tokens)
    return {"action": out.action_logits, "cb0": out.cb0_logits, "depformer": out.depformer_logits}


def _assert_same(a: dict, b: dict, atol: float = ATOL) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def _assert_differ(a: dict, b: dict) -> None:
    for key in a:
        assert (a[key] - b[key]).abs().max() > 1e-3, f"{key} logits unchanged by the adapter"


def test_adapter_is_a_plain_peft_folder(adapter_dir):
    assert sorted(p.name for p in adapter_dir.iterdir() if p.suffix != ".md") == [
        "adapter_config.json", "adapter_model.safetensors",
    ]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"] == DEFAULT_TARGET_MODULES


def test_default_targets_cover_both_stacks(base):
    targeted = {name for name, _ in base.named_modules() if re.fullmatch(DEFAULT_TARGET_MODULES, name)}
    cfg = base.config
    groups = cfg.num_weight_groups
    per_decoder_layer, per_depformer_layer = 6, 2 * groups + 2  # q,k,v,o,wi,wo | in/out per group, wi, wo
    expected = (
        cfg.model.decoder.n_layer * per_decoder_layer + cfg.model.depformer.n_layer * per_depformer_layer + groups
    )
    assert len(targeted) == expected
    assert {"transformer.layers.1.attn.k_proj", "depformer.layers.1.self_attention.in_proj.2",
            "depformer.depformer_in.0", "depformer.layers.0.mlp.wo"} <= targeted
    assert not any("head" in n or "logits" in n or "embed" in n for n in targeted)


def test_merged_equals_unmerged_and_differs_from_base(base, tokens, adapter_dir):
    reference = _logits(base, tokens)
    merged = load_adapter(copy.deepcopy(base), adapter_dir)
    handle = load_adapter(copy.deepcopy(base), adapter_dir, merge=False)
    assert type(merged) is Dia2Model and isinstance(handle, AdaptedModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    # The merged model keeps the checkpoint's parameter names, so it saves as a normal model.
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert any(isinstance(m, BaseTunerLayer) for m in handle.model.modules())
    merged_out, live_out = _logits(merged, tokens), _logits(handle, tokens)
    _assert_same(merged_out, live_out)
    _assert_differ(merged_out, reference)


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.skipif(not CAN_PACK, reason="no oneDNN"))])
def test_handle_switches_between_voice_and_base(base, tokens, adapter_dir, packed):
    """Also on packed weights (the serving engine's on a CPU): a merge or unmerge changes the
    weights behind autograd's back, and the packed copies follow."""
    model = copy.deepcopy(base)
    pack_linears(model, enabled=packed)
    reference = _logits(model, tokens)
    handle = load_adapter(model, adapter_dir, merge=False)
    adapted = _logits(handle, tokens)
    handle.disable()
    assert not handle.enabled
    _assert_same(_logits(handle, tokens), reference, atol=1e-6)
    handle.enable()
    _assert_same(_logits(handle, tokens), adapted, atol=1e-6)
    handle.merge()
    assert handle.merged
    _assert_same(_logits(handle.model, tokens), adapted)
    with handle.disabled() as plain:
        _assert_same(_logits(plain, tokens), reference)
    assert handle.merged and handle.enabled
    handle.unmerge()
    assert not handle.merged
    _assert_same(_logits(handle, tokens), adapted)


def test_step_decoding_through_handle_equals_forward(base, tokens, adapter_dir):
    handle = load_adapter(copy.deepcopy(base), adapter_dir, merge=False)
    with torch.no_grad():
        full = handle(tokens)
        state = handle.new_state(tokens.shape[0], FRAMES)
        outs = [handle.step(tokens[:, :, t : t + 1], state) for t in range(FRAMES)]
        stages = handle.config.num_depformer_stages
        deps = [
            torch.stack(
                [handle.depformer_step(s, outs[t].hidden[:, 0], tokens[:, 2 + s, t + 1], state) for s in range(stages)],
                dim=1,
            )
            for t in range(FRAMES - 1)
        ]
    torch.testing.assert_close(torch.cat([o.cb0_logits for o in outs], 1), full.cb0_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([o.action_logits for o in outs], 1), full.action_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(deps, 1), full.depformer_logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "geometry, expected",
    [
        (dict(n_embd=96), r"'depformer\.depformer_in\.0' has shape \[4, 96\] but this model needs \[r, 64\]"),
        (dict(n_layer=3), r"adapts module 'transformer\.layers\.2\.attn\.[a-z_]+', which this model does not have"),
    ],
    ids=["n_embd", "more_layers"],
)
def test_adapter_for_another_base_is_refused_untouched(base, tokens, tmp_path, geometry, expected):
    folder = save_random_adapter(tmp_path / "other", tiny_model_config(**geometry), base_name="nari-labs/Dia2-2B")
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError) as info:
        load_adapter(model, folder)
    message = str(info.value)
    assert re.search(expected, message), message
    assert "trained for another base model ('nari-labs/Dia2-2B'" in message and str(folder) in message
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    _assert_same(_logits(model, tokens), _logits(base, tokens), atol=0)


def test_adapter_with_fewer_layers_is_refused(tmp_path, adapter_dir):
    deeper = Dia2Model.from_config(tiny_model_config(n_layer=3))
    with pytest.raises(AdapterError, match=r"select 'transformer\.layers\.2\.attn\.q_proj' .* holds no weights"):
        load_adapter(deeper, adapter_dir)


def _copy_without(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    (dst / name).unlink()
    return dst


def test_bad_folders_give_adapter_errors(base, tmp_path, adapter_dir):
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError, match="neither an existing folder nor a Hub repo id"):
        load_adapter(model, tmp_path / "missing" / "voice")
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        load_adapter(model, _copy_without(adapter_dir, tmp_path / "a", "adapter_config.json"))
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        load_adapter(model, _copy_without(adapter_dir, tmp_path / "b", "adapter_model.safetensors"))
    broken = shutil.copytree(adapter_dir, tmp_path / "c")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter(model, broken)
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": ["wi"]}))
    with pytest.raises(AdapterError, match=r"not a LoRA adapter .*'IA3'"):
        load_adapter(model, broken)
    with pytest.raises(AdapterError, match="is a file"):
        load_adapter(model, adapter_dir / "adapter_config.json")
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())


def test_uncached_repo_id_while_offline(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match=r"adapter 'someone/voice-lora' .*HF_HUB_OFFLINE is set"):
        load_adapter(copy.deepcopy(base), "someone/voice-lora", cache_dir=str(tmp_path))


def test_repo_id_served_from_the_hub_cache(base, tokens, tmp_path, adapter_dir):
    """A Hub repo id resolves through huggingface_hub's cache layout, offline."""
    commit = "0" * 40
    repo = tmp_path / "models--someone--voice-lora"
    shutil.copytree(adapter_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from_hub = load_adapter(copy.deepcopy(base), "someone/voice-lora", cache_dir=str(tmp_path))
    local = load_adapter(copy.deepcopy(base), adapter_dir)
    _assert_same(_logits(from_hub, tokens), _logits(local, tokens), atol=0)


def test_adapter_on_a_4bit_base(base, tokens, adapter_dir):
    """A QLoRA-style deployment: the voice served live on a quantized base, switchable off."""
    from dia2.model.quant import quantize

    quantized = quantize(copy.deepcopy(base), "4bit")
    reference = _logits(quantized, tokens)
    handle = load_adapter(quantized, adapter_dir, merge=False)
    adapted = _logits(handle, tokens)
    assert all(torch.isfinite(x).all() for x in adapted.values())
    _assert_differ(adapted, reference)
    with handle.disabled():
        _assert_same(_logits(handle, tokens), reference, atol=1e-6)


# --- what a wrong folder holds, and an adapter on another base (issue 15) ---------------------


@pytest.fixture
def saved_adapter(tmp_path):
    cfg = tiny_model_config()
    return cfg, save_random_adapter(tmp_path / "run" / "adapter", cfg, base_name="nari-labs/Dia2-2B")


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
