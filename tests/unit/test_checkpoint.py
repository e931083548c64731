"""Loading published-format checkpoints: round trip, manifest, Hub cache, and every error."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dia2 import AssetError, CheckpointError, Dia2Model, save_model
from dia2.model.assets import ModelSource
from dia2.model.checkpoint import load_weights
from dia2.model.config import parse_config
from tests.conftest import tiny_raw_config


@pytest.fixture
def saved(tmp_path):
    cfg = parse_config(tiny_raw_config(schedule=[0, 1, 1, 2], text_embedding=True))
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg).eval()
    folder = save_model(model, tmp_path / "model")
    return model, folder


def _tokens(cfg, frames=6):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.data.text_vocab_size, (1, cfg.data.channels, frames), generator=g)
    tokens[:, 2:] %= cfg.data.audio_vocab_size
    return tokens


def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert all(t.dtype == torch.float32 for t in load_file(folder / "model.safetensors").values())
    loaded = Dia2Model.from_pretrained(folder)
    assert not loaded.training
    tokens = _tokens(model.config)
    with torch.no_grad():
        a, b = model(tokens), loaded(tokens)
    for field in ("action_logits", "cb0_logits", "depformer_logits"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_float32_file_is_cast_to_requested_dtype(saved):
    model, folder = saved
    loaded = Dia2Model.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    ref = model.state_dict()["transformer.cb0_head.weight"].to(torch.bfloat16)
    assert torch.equal(loaded.state_dict()["transformer.cb0_head.weight"], ref)


def test_streaming_load_allocates_on_the_target_device_only(saved):
    model, folder = saved
    meta = Dia2Model.from_config(model.config, device="meta")
    load_weights(meta, folder / "model.safetensors", device="cpu")
    assert not any(p.is_meta for p in meta.parameters())
    assert torch.equal(meta.state_dict()["depformer.logits.3.weight"], model.state_dict()["depformer.logits.3.weight"])


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, str(path))


def test_missing_keys_are_listed(saved):
    _, folder = saved
    _rewrite(folder, lambda s: [s.pop(k) for k in [k for k in s if k.startswith("depformer.layers.")]])
    with pytest.raises(CheckpointError) as err:
        Dia2Model.from_pretrained(folder)
    msg = str(err.value)
    assert "missing key(s): depformer.layers.0." in msg and "... and" in msg and "same Dia2 checkpoint" in msg


def test_unexpected_keys_are_listed(saved):
    _, folder = saved
    _rewrite(folder, lambda s: s.update({"transformer.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): transformer.extra.weight"):
        Dia2Model.from_pretrained(folder)


def test_shape_mismatch_names_key_and_both_shapes(saved):
    _, folder = saved
    _rewrite(folder, lambda s: s.update({"transformer.norm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError) as err:
        Dia2Model.from_pretrained(folder)
    assert "'transformer.norm.weight' has shape [65] in the file but [64] in the model" in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_or_truncated_file(saved, damage):
    _, folder = saved
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt: delete it and download it again"):
        Dia2Model.from_pretrained(folder)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file_in_folder(saved, name):
    _, folder = saved
    (folder / name).unlink()
    with pytest.raises(AssetError, match=f"lacks '{name}'"):
        Dia2Model.from_pretrained(folder)


def test_not_a_folder_nor_repo_id(tmp_path):
    with pytest.raises(AssetError, match="neither an existing folder nor a Hub repo id"):
        Dia2Model.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_manifest_names_other_files(saved, monkeypatch):
    model, folder = saved
    (folder / "model.safetensors").rename(folder / "weights-v2.safetensors")
    (folder / "config.json").rename(folder / "arch.json")
    (folder / "dia2_assets.json").write_text(json.dumps({"config": "arch.json", "weights": "weights-v2.safetensors"}))
    loaded = Dia2Model.from_pretrained(folder)
    assert torch.equal(loaded.state_dict()["transformer.norm.weight"], model.state_dict()["transformer.norm.weight"])
    # The manifest's name can be overridden; a named manifest that is absent is an error.
    monkeypatch.setenv("DIA2_ASSET_MANIFEST", "custom_assets.json")
    with pytest.raises(AssetError, match="lacks 'custom_assets.json'"):
        Dia2Model.from_pretrained(folder)
    shutil.copy(folder / "dia2_assets.json", folder / "custom_assets.json")
    Dia2Model.from_pretrained(folder)


def test_bad_manifest(saved):
    _, folder = saved
    (folder / "dia2_assets.json").write_text("{oops")
    with pytest.raises(AssetError, match="not valid JSON"):
        Dia2Model.from_pretrained(folder)
    (folder / "dia2_assets.json").write_text(json.dumps({"weights": 3}))
    with pytest.raises(AssetError, match="'weights' must be a string"):
        Dia2Model.from_pretrained(folder)


def _fake_hub_cache(cache, repo_id, folder):
    """Lay out files the way huggingface_hub's cache stores a downloaded snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    shutil.copytree(folder, snap)
    return snap


def test_hub_repo_id_served_from_cache_while_offline(saved, tmp_path, monkeypatch):
    model, folder = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/Dia2-Tiny", folder)
    loaded = Dia2Model.from_pretrained("someone/Dia2-Tiny", cache_dir=str(cache))
    assert torch.equal(loaded.state_dict()["depformer.norm.weight"], model.state_dict()["depformer.norm.weight"])


def test_hub_repo_not_cached_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError) as err:
        Dia2Model.from_pretrained("nari-labs/Dia2-2B", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "config.json" in msg and "HF_HUB_OFFLINE is set" in msg and "hf download nari-labs/Dia2-2B" in msg


def test_explicit_config_and_weights_paths(saved, tmp_path):
    model, folder = saved
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.move(folder / "model.safetensors", other / "w.safetensors")
    loaded = Dia2Model.from_pretrained(folder, weights_path=other / "w.safetensors")
    assert torch.equal(loaded.state_dict()["transformer.norm.weight"], model.state_dict()["transformer.norm.weight"])
    with pytest.raises(AssetError, match="weights file .* not found"):
        Dia2Model.from_pretrained(folder, weights_path=other / "nope.safetensors")


def test_save_is_atomic(saved, monkeypatch):
    """A save that dies mid-write leaves the previous model.safetensors loadable."""
    model, folder = saved
    import dia2.model.checkpoint as ckpt

    def dying_save(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, folder)
    Dia2Model.from_pretrained(folder)


def test_load_streams_one_tensor_at_a_time(saved, monkeypatch):
    """Never two full copies of the weights: at most one file tensor is alive during the load."""
    import weakref

    import dia2.model.checkpoint as ckpt

    real_open = ckpt.safe_open
    alive, peak, reads = set(), [0], [0]

    class Tracking:
        def __init__(self, *args, **kwargs):
            self._handle = real_open(*args, **kwargs)

        def __enter__(self):
            self._inner = self._handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def keys(self):
            return self._inner.keys()

        def get_slice(self, name):
            return self._inner.get_slice(name)

        def get_tensor(self, name):
            tensor = self._inner.get_tensor(name)
            token = object()
            alive.add(id(token))
            weakref.finalize(tensor, alive.discard, id(token))
            peak[0] = max(peak[0], len(alive))
            reads[0] += 1
            return tensor

    monkeypatch.setattr(ckpt, "safe_open", Tracking)
    model, folder = saved
    Dia2Model.from_pretrained(folder)
    assert reads[0] == len(model.state_dict())
    assert peak[0] == 1


def test_a_model_that_is_no_source_names_the_tiny_spelling(tmp_path):
    with pytest.raises(AssetError, match="neither an existing folder nor a Hub repo id .*'tiny'"):
        ModelSource.resolve(str(tmp_path / "nope"))


def test_saved_weights_get_the_mode_of_any_new_file(tiny_tts, tmp_path):
    import os

    folder = save_model(tiny_tts.model, tmp_path / "m")
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == (folder / "config.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
