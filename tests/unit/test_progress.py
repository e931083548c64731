"""Progress in a log (issue 27, item 6): plain lines that never go silent, with time left."""

import io
import time

from dia2.progress import LineProgress, progress_bar


def test_a_log_gets_lines_at_the_start_while_silent_and_at_the_end():
    log = io.StringIO()
    bar = progress_bar(10, "evaluating", "clip", file=log, interval=0.05)
    assert isinstance(bar, LineProgress)
    time.sleep(0.3)  # no clip finishes: the heartbeat still writes
    bar.update(5)
    bar.set_postfix_str("base p1 s0")
    time.sleep(0.2)
    bar.write("a note")
    bar.update(5)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("evaluating: 0/10 clips (0%), 0:00 elapsed")
    assert sum(line.startswith("evaluating: 0/10") for line in lines) >= 3  # start + heartbeats while silent
    assert any(line.startswith("evaluating: 5/10 clips (50%)") and "left, base p1 s0" in line for line in lines)
    assert "a note" in lines and lines[-1].startswith("evaluating: 10/10 clips (100%)") and lines[-1].endswith("done")
    assert "\r" not in log.getvalue()
