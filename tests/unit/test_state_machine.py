"""The text-stream state machine (spec section 5) and forced driving for training (section 7).

The tables are traced by hand from the spec's steps 1-5. Ids: bos 1, new_word 2, pad 3, zero 7,
[S1] 49152, [S2] 49153. Each row: step, action, forced, expected (main, second), and the
(padding_budget, forced_padding) the state holds after the step.
"""

import pytest

from dia2.model.config import DataConfig
from dia2.text.align import training_alignment
from dia2.text.script import Entry, TextTokenIds
from dia2.text.state_machine import StateMachine, drive_forced, forced_text_streams
from dia2.text.words import SpokenWord

S1, S2 = 49152, 49153
NW, PAD = 2, 3
IDS = TextTokenIds(bos=1, new_word=NW, pad=PAD, zero=7, spk1=S1, spk2=S2)

HI = Entry((S1, 10), "hi", 2)
THERE = Entry((S2, 20, 21), "there", 3)
YOU = Entry((30,), "you", 1)


def run_table(machine, state, table):
    for step, action, forced, expected, counters in table:
        got = machine.process(state, step, action, forced=forced)
        assert got == expected, f"step {step}: (main, second) {got} != {expected}"
        assert (state.padding_budget, state.forced_padding) == counters, f"step {step}: counters"


# k = 0, max_padding 6, initial_padding 2. Entries: hi, a 3-frame break, there.
TABLE_K0 = [
    (0, 1, False, (PAD, PAD), (1, 1)),  # initial forced padding overrides new_word
    (1, 0, False, (PAD, PAD), (0, 0)),
    (2, 0, False, (NW, NW), (6, 2)),  # budget 0 forces new_word: "hi" starts, budget reset to 6
    (3, 1, False, (S1, S1), (5, 1)),  # pending tokens win over the sampled new_word
    (4, 0, False, (10, 10), (4, 0)),
    (5, 1, False, (PAD, PAD), (3, 2)),  # the break: new_word turns into pad, forced_padding = 3 - 1
    (6, 1, False, (PAD, PAD), (2, 1)),  # still inside the break's forced padding
    (7, 0, False, (PAD, PAD), (1, 0)),
    (8, 0, False, (PAD, PAD), (0, 0)),
    (9, 0, False, (NW, NW), (6, 3)),  # budget forces "there"
    (10, 1, False, (S2, S2), (5, 2)),
    (11, 0, False, (20, 20), (4, 1)),
    (12, 0, False, (21, 21), (3, 0)),
    (13, NW, False, (PAD, PAD), (2, 0)),  # action 2 is not an action id: pad (spec step 1)
    (14, 1, False, (PAD, PAD), (1, 0)),  # no entries left: pad, end_step = 14
    (15, 1, False, (PAD, PAD), (0, 0)),
    (16, 0, False, (PAD, PAD), (0, 0)),  # budget forces new_word, which has nothing to start
]


def test_hand_traced_k0():
    machine = StateMachine(IDS, second_stream_ahead=0)
    state = machine.new_state([HI, Entry((), "", 3), THERE])
    run_table(machine, state, TABLE_K0)
    assert state.transcript == [("hi", 2), ("there", 9)]
    assert state.end_step == 14
    assert not state.pending and not state.lookahead and not state.entries


# k = 2. Entries: hi, a 1-frame break, there, you.
TABLE_K2 = [
    (0, 0, False, (PAD, PAD), (1, 1)),
    (1, 1, False, (PAD, PAD), (0, 0)),
    # "hi" starts: main shows its first token at once, second carries new_word; lookahead gets the
    # 2nd following entry with tokens ("you": the break is skipped, "there" is the 1st).
    (2, 1, False, (S1, NW), (6, 2)),
    (3, 0, False, (10, 30), (5, 1)),  # second stream plays the lookahead
    (4, 1, False, (PAD, PAD), (4, 0)),
    (5, 1, False, (PAD, PAD), (3, 0)),  # the break (padding 1), counted down on the same step
    (6, 1, False, (S2, NW), (6, 3)),  # "there": no 2nd following entry with tokens, no lookahead
    (7, 1, True, (20, PAD), (5, 2)),  # forced new_word still yields to pending tokens
    (8, 0, False, (21, PAD), (4, 1)),
    (9, 1, True, (30, NW), (6, 1)),  # forced keeps new_word despite forced_padding 1
    (10, 0, False, (PAD, PAD), (5, 0)),
    (11, 1, False, (PAD, NW), (5, 0)),  # no entries: k > 0 keeps new_word once; end_step = 11
    (12, 1, False, (PAD, PAD), (4, 0)),  # ... and only once
    (13, 1, True, (PAD, PAD), (3, 0)),
]


def test_hand_traced_k2():
    machine = StateMachine(IDS, second_stream_ahead=2)
    state = machine.new_state([HI, Entry((), "", 1), THERE, YOU])
    run_table(machine, state, TABLE_K2)
    assert state.transcript == [("hi", 2), ("there", 6), ("you", 9)]
    assert state.end_step == 11


def test_lookahead_k1_skips_breaks():
    machine = StateMachine(IDS, second_stream_ahead=1, initial_padding=0)
    state = machine.new_state([Entry((10,), "a", 1), Entry((), "", 1), Entry((20, 21), "b", 2)])
    assert machine.process(state, 0, 1) == (10, NW)
    assert list(state.lookahead) == [20, 21]
    assert machine.process(state, 1, 0) == (PAD, 20)
    assert machine.process(state, 2, 0) == (PAD, 21)
    assert machine.process(state, 3, 0) == (PAD, PAD)


def test_forced_pad_is_kept_where_the_budget_would_force_a_word():
    machine = StateMachine(IDS, initial_padding=0)
    state = machine.new_state([YOU])
    assert machine.process(state, 0, 0, forced=True) == (PAD, PAD)
    assert list(state.entries) == [YOU]
    assert machine.process(state, 1, 0) == (NW, NW)  # unforced: budget 0 forces the word
    assert state.transcript == [("you", 1)]


def test_entries_can_be_appended_to_a_live_state():
    machine = StateMachine(IDS, initial_padding=0)
    state = machine.new_state([Entry((10,), "a", 1)])
    assert [machine.process(state, t, 1 - t) for t in range(2)] == [(NW, NW), (10, 10)]
    state.append_entries([Entry((20,), "b", 1)])
    assert machine.process(state, 2, 1) == (NW, NW)
    assert machine.process(state, 3, 0) == (20, 20)
    assert machine.process(state, 4, 1) == (PAD, PAD)
    assert state.transcript == [("a", 0), ("b", 2)] and state.end_step == 4
    with pytest.raises(ValueError, match="already ended at step 4"):
        state.append_entries([Entry((30,), "c", 1)])


def test_from_config_uses_published_max_padding():
    data = DataConfig(
        channels=34, text_vocab_size=49280, audio_vocab_size=2050, action_vocab_size=2,
        text_pad_token_id=3, text_new_word_token_id=2, action_pad_token_id=0,
        action_new_word_token_id=1, max_pad=8, second_stream_ahead=2,
    )
    machine = StateMachine.from_config(data, IDS)
    assert (machine.second_stream_ahead, machine.max_padding, machine.initial_padding) == (2, 6, 2)
    assert (machine.action_new_word, machine.action_pad) == (1, 0)


# --- forced driving (training grids, voice prefixes) ---------------------------------------------

A = Entry((10, 11), "a", 2)
B = Entry((20,), "b", 1)


@pytest.mark.parametrize(
    "k, main, second",
    [
        # Steps 1 and 5 start a and b, step 7 is the end of speech. Column 0 is (bos, pad);
        # column t + 1 is the output of step t.
        (0, [1, PAD, NW, 10, 11, PAD, NW, 20, PAD, PAD], [PAD, PAD, NW, 10, 11, PAD, NW, 20, PAD, PAD]),
        (1, [1, PAD, 10, 11, PAD, PAD, 20, PAD, PAD, PAD], [PAD, PAD, NW, 20, PAD, PAD, NW, PAD, NW, PAD]),
        (2, [1, PAD, 10, 11, PAD, PAD, 20, PAD, PAD, PAD], [PAD, PAD, NW, PAD, PAD, PAD, NW, PAD, NW, PAD]),
    ],
)
def test_forced_text_streams_hand_traced(k, main, second):
    machine = StateMachine(IDS, second_stream_ahead=k)
    assert forced_text_streams(machine, [A, B], [1, 5, 7], 10) == (main, second)


@pytest.mark.parametrize(
    "steps, columns, message",
    [
        ([1, 2], 10, "still has 2 token"),  # b would start while a's tokens are pending
        ([1, 9], 10, "must lie in"),  # step 9 writes column 10, outside a 10-column grid
        ([5, 1], 10, "strictly increasing"),
        ([1, 5, 7, 8], 10, "at most one step per entry"),
        ([1], 0, "num_columns"),
    ],
)
def test_forced_text_streams_bad_steps(steps, columns, message):
    with pytest.raises(ValueError, match=message):
        forced_text_streams(StateMachine(IDS), [A, B], steps, columns)


@pytest.mark.parametrize("k", [0, 2])
def test_aligned_words_drive_the_machine_exactly(k):
    """Alignment + forced driving: every aligned step starts its word, the end step ends speech."""
    words = [SpokenWord("w0", 0.2, 0.5), SpokenWord("w1", 0.52, 0.9), SpokenWord("w2", 1.3, 1.8)]
    alignment = training_alignment(words, [2, 3, 1])
    tokens = [(S1, 10), (20, 21, 22), (30,)]
    entries = [Entry(t, f"w{i}", len(t)) for i, t in enumerate(tokens)]  # a script's padding
    steps = [*alignment.new_word_steps, alignment.end_of_speech_step]  # 4, 8, 18, 24
    machine = StateMachine(IDS, second_stream_ahead=k)
    state = machine.new_state(entries)
    main, second = drive_forced(machine, state, set(steps), range(30))
    assert state.transcript == [("w0", 4), ("w1", 8), ("w2", 18)]
    assert state.end_step == 24
    marker_stream = second if k else main  # with k > 0 new_word lives in the second stream
    assert [t for t, tok in enumerate(marker_stream) if tok == NW] == (steps if k else steps[:3])
    # Every token of every word is spoken, in order, on the main stream.
    assert [tok for tok in main if tok not in (NW, PAD)] == [tok for t in tokens for tok in t]
