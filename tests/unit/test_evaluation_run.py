"""dia2.evaluation run/inputs/report pieces: prompts, adapters switched in and out exactly,
aggregates, the staged output folder and the HTML page (the whole command: tests/e2e/test_eval_cli.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dia2.evaluation.inputs import (
    EvalInputError,
    Reference,
    adapter_labels,
    check_adapter_bases,
    read_prompts,
)
from dia2.evaluation.report import render_html, staged
from dia2.evaluation.run import (
    Clip,
    Configuration,
    EvalSetup,
    Evaluation,
    adapter_applied,
    aggregate,
    configurations,
)
from dia2.evaluation.scoring import ClipScores
from dia2.generation.config import GenerationConfig
from dia2.text.words import SpokenWord
from tests.helpers.adapters import save_random_adapter

SHORT = GenerationConfig(max_frames=20, seed=0)


def test_the_shipped_prompts_are_speakable_one_speaker_lines(tiny_tts):
    prompts = read_prompts()
    assert 6 <= len(prompts) <= 12 and len(set(prompts)) == len(prompts)
    for prompt in prompts:
        assert prompt.startswith("[S1] ") and "[S2]" not in prompt and len(prompt.split()) >= 5
        tiny_tts.parse(prompt)


def test_prompt_files_skip_comments_and_tag_bare_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\nHello there.\n[S2] Hi!\n")
    assert read_prompts(path) == ["[S1] Hello there.", "[S2] Hi!"]
    path.write_text("# only a comment\n")
    with pytest.raises(EvalInputError, match="holds no prompts"):
        read_prompts(path)


def test_configurations_and_labels():
    labels = adapter_labels(["runs/a/adapter", "runs/b/adapter/", "user/my voice"])
    assert labels == ["adapter", "adapter-2", "my_voice"]
    names = [c.name for c in configurations(dict(zip(labels[:1], ["x"])), with_prefix=True)]
    assert names == ["base", "base+prefix", "adapter", "adapter+prefix"]
    assert [c.name for c in configurations({}, with_prefix=False)] == ["base"]


def test_an_adapter_is_applied_inside_the_block_and_removed_exactly_after(tiny_tts, tmp_path):
    adapter = save_random_adapter(tmp_path / "voice", seed=3)
    before = tiny_tts.generate("[S1] Hello there.", SHORT).audio_tokens
    with adapter_applied(tiny_tts, str(adapter)):
        inside = tiny_tts.generate("[S1] Hello there.", SHORT).audio_tokens
    after = tiny_tts.generate("[S1] Hello there.", SHORT).audio_tokens
    assert not torch.equal(before, inside) and torch.equal(before, after)


def test_the_adapter_effect_is_counted_over_every_clip(tiny_tts, tmp_path):
    from dia2.evaluation import ClipScorer

    setup = EvalSetup(("[S1] Hello there.",), seeds=(0, 1), generation=SHORT, toplines=False)
    evaluation = Evaluation(tiny_tts, setup, ClipScorer(asr=None, speaker=None), tmp_path)
    data = evaluation.run({"voice": str(save_random_adapter(tmp_path / "voice", seed=3))}, references=[])
    assert data["adapter_effect"] == [{
        "configuration": "voice", "adapter": str(tmp_path / "voice"), "compared_with": "base",
        "clips": 2, "identical_clips": 0, "passed": True,
    }]
    assert [c["aggregate"]["clips"] for c in data["configurations"]] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "clips" / "voice").iterdir()) == ["p0_s0.wav", "p0_s1.wav"]


def _clip(prompt: int, similarity: float | None, hit: bool = False) -> Clip:
    scores = ClipScores(wer=0.5, cer=0.25, similarity=similarity, dnsmos=None, transcript="x", duration_s=2.0, expected_duration_s=1.0,
                        leading_silence_s=0.1, trailing_silence_s=0.2, hit_frame_limit=hit, word_coverage=None)
    return Clip("base", prompt, "<b>hi</b>", 0, f"clips/base/p{prompt}.wav", scores)


def test_aggregate_means_and_the_similarity_spread_across_seeds():
    clips = [_clip(0, 0.5), _clip(0, 0.7, hit=True), _clip(1, 0.6), _clip(1, 0.6), _clip(2, None)]
    out = aggregate(clips)
    assert out["clips"] == 5 and out["frame_limit_hits"] == 1
    assert out["similarity"] == pytest.approx(0.6) and out["wer"] == 0.5 and out["duration_ratio"] == 2.0
    assert out["similarity_spread"] == pytest.approx((0.1 + 0.0) / 2)
    assert out["word_coverage"] is None


def test_the_page_escapes_text_and_plots_every_group():
    clips = [_clip(0, 0.5), _clip(1, None)]
    data = {"configurations": [{**dataclasses.asdict(Configuration("base")), "aggregate": aggregate(clips)}],
            "clips": [c.as_dict() for c in clips], "adapter_effect": [], "settings": {"model": "tiny"}}
    page = render_html(data)
    assert "<b>hi</b>" not in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    assert page.count("<svg") == 3 and page.count("<audio") == 2 and "No adapters evaluated" in page


def test_staged_output_appears_only_on_success(tmp_path):
    target = tmp_path / "report"
    with pytest.raises(RuntimeError), staged(target) as work:
        (work / "eval.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staged(target) as work:
        (work / "eval.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and (target / "eval.json").is_file()


def _adapter_files(folder, base=None, voice_base=None):
    """An adapter folder whose files record `base` (adapter_config.json) and `voice_base` (dia2_voice.json)."""
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "base_model_name_or_path": base}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")  # only the recorded names are read here
    if voice_base is not None:
        (folder / "dia2_voice.json").write_text(json.dumps({"format": "dia2-voice/1", "base_model": voice_base}))
    return str(folder)


def test_an_adapter_recorded_for_another_base_is_refused_with_the_way_round(tmp_path):
    unrecorded = _adapter_files(tmp_path / "plain")
    tiny = _adapter_files(tmp_path / "tiny-voice", base="tiny", voice_base="tiny")
    check_adapter_bases([unrecorded, tiny], "tiny")
    big = _adapter_files(tmp_path / "big-voice", base="nari-labs/Dia2-2B")
    with pytest.raises(EvalInputError, match=r"big-voice was trained on base 'nari-labs/Dia2-2B' \(its adapter_config.json "
                       r"says so\), not on --model tiny: pass --model nari-labs/Dia2-2B, or add --allow-other-base"):
        check_adapter_bases([tiny, big], "tiny")
    voice_only = _adapter_files(tmp_path / "voice-only", voice_base="nari-labs/Dia2-1B")
    with pytest.raises(EvalInputError, match=r"'nari-labs/Dia2-1B' \(its dia2_voice.json says so\)"):
        check_adapter_bases([voice_only], "nari-labs/Dia2-2B")
    # A run's adapter folder in the one voice format records its base in voice.json's run record.
    from dia2.generation.voice import Voice, write_voice

    run_voice = _adapter_files(tmp_path / "run-voice")
    write_voice(Voice(adapter=run_voice, run={"base_model": "nari-labs/Dia2-1B"}), run_voice)
    with pytest.raises(EvalInputError, match=r"'nari-labs/Dia2-1B' \(its voice.json says so\)"):
        check_adapter_bases([run_voice], "nari-labs/Dia2-2B")
    # A local copy of the base: its folder recorded by path, or the repo it is a copy of.
    copy = tmp_path / "models" / "Dia2-2B"
    copy.mkdir(parents=True)
    check_adapter_bases([big, _adapter_files(tmp_path / "by-path", base=str(copy))], str(copy))
    with pytest.raises(EvalInputError, match="trained on base 'someone/Other-2B'"):
        check_adapter_bases([_adapter_files(tmp_path / "other", base="someone/Other-2B")], str(copy))
    with pytest.raises(EvalInputError, match=r"--adapter .*missing"):
        check_adapter_bases([str(tmp_path / "missing")], "tiny")


class HearsItsPrompt:
    """A transcriber that hears, for each clip the model spoke, that clip's prompt less its last
    word: scored against its own prompt a clip's WER is exactly 1 / (the prompt's words)."""

    def __init__(self, tts, monkeypatch) -> None:
        self.prompts: dict[bytes, str] = {}
        generate = tts.generate

        def spy(script, config=None, **kwargs):
            result = generate(script, config, **kwargs)
            self.prompts[np.asarray(result.waveform, np.float32).tobytes()] = script
            return result

        monkeypatch.setattr(tts, "generate", spy)

    def transcribe(self, waveform, sample_rate):
        words = self.prompts[np.asarray(waveform, np.float32).tobytes()].split()[1:-1]  # no tag, no last word
        return [SpokenWord(w, 0.0, 0.1) for w in words]


def test_each_clip_is_scored_against_its_own_prompt(tiny_tts, tmp_path, monkeypatch):
    from dia2.evaluation import ClipScorer

    prompts = ("[S1] Hello there.", "[S1] The quick brown fox jumps.", "[S1] One two three.")
    setup = EvalSetup(prompts, seeds=(0, 1), generation=GenerationConfig(max_frames=40), toplines=False)
    scorer = ClipScorer(asr=HearsItsPrompt(tiny_tts, monkeypatch), speaker=None)
    data = Evaluation(tiny_tts, setup, scorer, tmp_path).run({}, references=[])
    clips = data["clips"]
    assert [(c["prompt_index"], c["seed"]) for c in clips] == [(p, s) for p in range(3) for s in (0, 1)]
    for clip in clips:
        prompt = prompts[clip["prompt_index"]]
        assert clip["text"] == prompt
        assert clip["transcript"] == " ".join(prompt.split()[1:-1])
        assert clip["wer"] == pytest.approx(1 / (len(prompt.split()) - 1))
    assert data["configurations"][0]["aggregate"]["wer"] == pytest.approx((1 / 2 + 1 / 5 + 1 / 3) / 3)


class TableEncoder:
    """A speaker encoder that knows each reference's embedding (by its samples) and gives
    `other` for any other audio (the resynthesised references)."""

    def __init__(self, table: dict[bytes, np.ndarray], other: np.ndarray) -> None:
        self.table, self.other = table, other

    def embed(self, waveform, sample_rate):
        return self.table.get(np.asarray(waveform, np.float32).tobytes(), self.other)


def test_the_reference_topline_compares_each_reference_with_the_others_only(tiny_tts, tmp_path):
    from dia2.evaluation import ClipScorer

    rate = tiny_tts.codec.sample_rate
    e1, e2 = np.eye(2)
    waves = [np.random.default_rng(i).uniform(-0.5, 0.5, rate // 4).astype(np.float32) for i in range(3)]
    # Two references of one voice (e1) and one of another (e2): with itself in the set, each
    # reference would pull the voice towards its own embedding.
    table = {w.tobytes(): e for w, e in zip(waves, (e1, e1, e2))}
    refs = [Reference(f"r{i}", tmp_path / f"r{i}.wav", w, rate, None) for i, w in enumerate(waves)]
    scorer = ClipScorer(waves, reference_rate=rate, asr=None, speaker=TableEncoder(table, other=e1))
    setup = EvalSetup(("[S1] Hi.",), seeds=(0,), generation=SHORT)
    toplines = Evaluation(tiny_tts, setup, scorer, tmp_path).toplines(refs)
    recorded = [c.scores.similarity for c in toplines if c.group == "references"]
    resynthesised = [c.scores.similarity for c in toplines if c.group == "resynthesis"]
    half = 1 / np.sqrt(2)
    # r0 against {r1, r2} = unit(e1 + e2); r2 against {r0, r1} = e1, orthogonal to it.
    assert recorded == pytest.approx([half, half, 0.0], abs=1e-12)
    assert resynthesised == pytest.approx([half, half, 1.0], abs=1e-12)
    mean = aggregate([c for c in toplines if c.group == "references"])["similarity"]
    inflated = (2 * (2 / np.sqrt(5)) + 1 / np.sqrt(5)) / 3  # each reference inside its own voice
    assert mean == pytest.approx(2 * half / 3) and abs(mean - inflated) > 0.2
