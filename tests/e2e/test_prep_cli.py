"""`dia2-prep` refuses what cannot work, before loading any model, with a message naming the fix."""

import pytest

from data_prep.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_a_missing_input_is_named(tmp_path, capsys):
    code, err = run(capsys, tmp_path / "nope", tmp_path / "out", "--tiny")
    assert code == 2 and f"input {tmp_path / 'nope'} does not exist" in err


def test_an_output_folder_that_is_not_a_corpus_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    code, err = run(capsys, tmp_path / "in", tmp_path / "out", "--tiny")
    assert code == 2 and "is not a dia2-prep corpus" in err and "--overwrite" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["thesis.tex"]


def test_bad_option_values_stop_at_parse_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path / "out"), "--min-seconds", "5", "--max-seconds", "2"])
    assert exit_info.value.code == 2
    assert "--min-seconds 5.0 is more than --max-seconds 2.0" in capsys.readouterr().err


def test_an_unknown_speaker_in_the_map_is_named(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "map.csv").write_text("path,speaker\na.wav,carol\n")
    code, err = run(capsys, tmp_path / "in", tmp_path / "out", "--tiny", "--speaker-map", tmp_path / "map.csv", "--speakers", "ann,bob")
    assert code == 2 and "unknown speaker(s) carol" in err and "--speakers declares ann, bob" in err


@pytest.mark.parametrize(("how", "code", "said"), [("ctrl-c", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_a_stopped_run_says_so_in_one_line_and_how_to_continue(tmp_path, capsys, monkeypatch, how, code, said):
    import os
    import signal
    import time

    import data_prep.pipeline

    def stop(*args, **kwargs):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        raise KeyboardInterrupt

    monkeypatch.setattr(data_prep.pipeline, "load_work", stop)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(b"RIFF")
    got, err = run(capsys, tmp_path / "in", tmp_path / "out", "--tiny")
    assert got == code and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dia2-prep: stopped by {said}")
    assert "run the same command again to continue" in lines[0]


def test_a_hub_repo_id_to_push_to_is_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path / "out"), "--tiny", "--push-to-hub", "not_a_repo_id"])
    assert exit_info.value.code == 2 and "--push-to-hub not_a_repo_id: a Hub repo id is owner/name" in capsys.readouterr().err
