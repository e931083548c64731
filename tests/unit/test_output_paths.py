"""Outputs are checked before any work (issue 27, item 8): what can be written passes, what cannot
is named in one message."""

import os

import pytest

from dia2.output_paths import OutputPathError, check_writable


def test_writable_outputs_pass_and_nothing_is_created(tmp_path):
    (tmp_path / "old.wav").write_bytes(b"x")
    check_writable(tmp_path / "old.wav", "output")  # written over
    check_writable(tmp_path / "new.wav", "output")
    check_writable(tmp_path / "a" / "b" / "new.wav", "output")  # folders made on the way
    check_writable(tmp_path / "corpus", "output", folder=True)
    check_writable(tmp_path, "output", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.wav"]


@pytest.mark.parametrize("path, folder, said", [
    ("a-file/out.wav", False, "a-file is a file, not a folder"),
    ("a-file/deeper/out.wav", False, "a-file is a file, not a folder"),
    ("a-folder", False, "it is a folder; give a file name"),
    ("a-file", True, "it is a file; give a folder"),
])
def test_what_cannot_be_written_is_named(tmp_path, path, folder, said):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OutputPathError, match="--timestamps .* cannot be written: (.*/)?" + said):
        check_writable(tmp_path / path, "--timestamps", folder=folder)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="does not accept new files"):
            check_writable(locked / "out.wav", "output")
    finally:
        locked.chmod(0o700)
