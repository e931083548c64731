"""The Voices tab: make a voice from a recording (its transcript shown, to correct before saving,
with each typed word's time beside the heard words it came from), list, play and delete voices.
It works on the speech server's voices folder through the same `VoiceStore`, so the same checks
apply (decodable, 1-30 s, not silent, not clipped, words heard) and the server serves what is
made here.

A corrected transcript is re-aligned to the recording (`dia2.text.transcript.align_transcript`,
the routine the server's `transcript` field and `dia2-infer --prefix-transcript` use): words that
match keep their heard times; replaced, split or merged words take the span of the heard words
they replace. The page shows that table before anything is saved.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dia2.studio.backend import Studio, StudioError, read_recording, shows_errors
from dia2.text.transcript import TranscriptAlignment, align_transcript
from dia2.text.words import SpokenWord

COLUMNS = ["name", "kind", "speakers", "transcript"]
ALIGNMENT_COLUMNS = ["typed", "heard", "start (s)", "end (s)", "how"]
FEW_MATCHES = 0.5
"""Under this share of typed words heard as typed, the transcript may belong to other speech: the page says so."""


def voice_table(studio: Studio) -> list[list[Any]]:
    """One row per stored voice (the OpenAI aliases, which are not stored, left out)."""
    rows = []
    for v in studio.voices.list():
        if v.builtin:
            continue
        kind = " + ".join(k for k, present in (("recording", v.prefix is not None), ("adapter", v.adapter is not None)) if present)
        rows.append([v.name, kind, v.speakers, v.transcript])
    return rows


def heard_words(studio: Studio, recording: str | None) -> tuple[SpokenWord, ...]:
    """What Whisper hears in a recording (checked as an upload is); Whisper runs once per recording."""
    wave = read_recording(recording, studio.sample_rate, "the recording")[1]
    words = studio.make_prefix(wave).words
    if not words:
        raise StudioError("no words were heard in the recording: record the speaker talking")
    return words


def transcribe(studio: Studio, recording: str | None) -> tuple[str, str, list[list[str]]]:
    """The heard transcript, a note, and its words with their times."""
    words = heard_words(studio, recording)
    heard = " ".join(w.text for w in words)
    return heard, (f"heard {len(words)} word(s): correct the transcript if needed (add, remove, split or join words), "
                   "press Align to see each word's time, then save"), align_transcript(words, heard).table()


def align(studio: Studio, recording: str | None, transcript: str | None) -> tuple[list[list[str]], str]:
    """The typed transcript aligned to the heard words (a row per word, with times), and a note."""
    alignment = _aligned(studio, recording, transcript)
    return alignment.table(), alignment_note(alignment)


def _aligned(studio: Studio, recording: str | None, transcript: str | None) -> TranscriptAlignment:
    given = (transcript or "").strip()
    if not given:
        raise StudioError("the transcript is empty: press Transcribe, or type what the recording says")
    return align_transcript(heard_words(studio, recording), given)


def alignment_note(alignment: TranscriptAlignment) -> str:
    """How many typed words were heard as typed, how the others were placed, and a warning when
    so few match that the transcript may be of other speech."""
    placed = Counter(row.placement for row in alignment.rows if row.placement != "heard")
    placed.update({"dropped": len(alignment.dropped)} if alignment.dropped else {})
    how = "; ".join(f"{n} {placement}" for placement, n in placed.items())
    note = f"{alignment.matched} of {len(alignment.rows)} typed word(s) heard as typed" + (f"; {how}" if how else "")
    if alignment.matched_fraction < FEW_MATCHES:
        note += (". Few words match what was heard: is this the transcript of this recording? The times of the "
                 "other words are guesses")
    return note + ". Check the times, then save."


def save_voice(studio: Studio, name: str, recording: str | None, transcript: str | None,
               replace: bool) -> tuple[str, list[list[str]]]:
    """Store the recording as voice `name` (with the corrected transcript, aligned, if given);
    returns a note and the words as stored, with their times."""
    from dia2.serving.voices import VoiceExists

    name = (name or "").strip()
    if not name:
        raise StudioError("give the voice a name (letters, digits, '-', '_' or '.')")
    data = read_recording(recording, studio.sample_rate, "the recording")[0]
    given = (transcript or "").strip() or None
    table = _aligned(studio, recording, given).table() if given else None
    try:
        stored = studio.voices.add(name, data, transcript=given, replace=bool(replace))
    except VoiceExists:
        raise StudioError(f"a voice named '{name}' exists already: tick 'Replace a voice of that name' to overwrite "
                          "it, or give another name") from None
    words = stored.prefix.words
    if table is None:
        table = align_transcript(words, " ".join(w.text for w in words)).table()
    return f"voice '{name}' saved: {' '.join(w.text for w in words)}", table


def play(studio: Studio, name: str | None) -> tuple[str | None, str]:
    """What Play plays: a voice's recording, or a sample an adapter's training spoke; and a note
    saying which (or why there is nothing to play)."""
    if not name:
        raise StudioError("choose a voice to play")
    stored = studio.voices.get(name)
    if stored.prefix is not None:
        files = sorted(Path(studio.voices.folder, stored.name).glob("speaker_1.*"))
        if files:
            return str(files[0]), f"voice '{name}': its recording"
    if stored.adapter is not None:
        sample = adapter_sample(Path(stored.adapter))
        if sample is not None:
            return str(sample[0]), f"adapter voice '{name}': a sample its training spoke ({sample[1]})"
        return None, (f"adapter voice '{name}' has no sample to play (its training spoke no evaluation script): "
                      "choose it as the Adapter in Speak to hear it")
    return None, f"voice '{name}' has no recording to play"


def adapter_sample(adapter: Path) -> tuple[Path, str] | None:
    """The last sample a training run spoke with the adapter (its file, its script), if any: the
    run record of the adapter's voice names them relative to the run folder (the adapter's parent)."""
    from dia2.generation.voice import VoiceError, read_voice

    try:
        run = read_voice(adapter).run
    except VoiceError:
        return None  # a Hub repo id, or an adapter not trained here
    for sample in (run or {}).get("samples", []):
        for root in (adapter.parent, adapter):
            path = root / sample["file"]
            if path.is_file():
                return path, sample.get("script", "")
    return None


def delete_voice(studio: Studio, name: str | None) -> str:
    if not name:
        raise StudioError("choose a voice to delete")
    studio.voices.delete(name)  # its adapter, if any, is unloaded through the store's listener
    return f"voice '{name}' deleted"


def build_voices_tab(studio: Studio, refresh: list[Any]) -> dict[str, Any]:
    """The tab's components; `refresh`: dropdowns of other tabs whose choices follow the voices
    (each a (component, choices function) pair)."""
    import gradio as gr

    with gr.Row():
        with gr.Column(min_width=300):
            gr.Markdown("### Make a voice\nA 1-30 s recording of one speaker talking.")
            recording = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                 elem_id="voice-recording")
            transcribe_button = gr.Button("Transcribe", elem_id="voice-transcribe")
            transcript = gr.Textbox(label="Transcript (correct it, then Align)", lines=2, elem_id="voice-transcript")
            align_button = gr.Button("Align", elem_id="voice-align")
            alignment = gr.Dataframe(headers=ALIGNMENT_COLUMNS, label="Each typed word's time in the recording",
                                     interactive=False, elem_id="voice-alignment", wrap=True)
            name = gr.Textbox(label="Voice name", elem_id="voice-name")
            replace = gr.Checkbox(label="Replace a voice of that name", value=False)
            save_button = gr.Button("Save voice", variant="primary", elem_id="voice-save")
            status = gr.Markdown(elem_id="voice-status")
        with gr.Column(min_width=300):
            gr.Markdown("### Stored voices")
            table = gr.Dataframe(value=voice_table(studio), headers=COLUMNS, interactive=False, elem_id="voice-table",
                                 wrap=True)
            chosen = gr.Dropdown([v[0] for v in voice_table(studio)], label="Voice", elem_id="voice-chosen",
                                 allow_custom_value=True)
            with gr.Row():
                play_button = gr.Button("Play", elem_id="voice-play", min_width=100)
                delete_button = gr.Button("Delete", variant="stop", elem_id="voice-delete", min_width=100)
            with gr.Row(visible=False) as confirm_row:
                confirm_button = gr.Button("Delete it for good", variant="stop", elem_id="voice-delete-confirm",
                                           min_width=100)
                keep_button = gr.Button("Keep it", elem_id="voice-delete-keep", min_width=100)
            player = gr.Audio(label="Recording or sample", type="filepath", interactive=False, elem_id="voice-player")

    def listing() -> list[Any]:
        names = [v[0] for v in voice_table(studio)]
        return [voice_table(studio), gr.update(choices=names, value=None),
                *[gr.update(choices=choices()) for _, choices in refresh]]

    def ask(name: str | None) -> tuple[Any, str]:
        """Delete's first click: nothing is deleted until the user confirms."""
        if not name:
            raise StudioError("choose a voice to delete")
        studio.voices.get(name)  # an unknown name is named now, not after the confirmation
        return gr.update(visible=True), f"delete voice '{name}' and its files? Confirm below, or keep it"

    listed = [table, chosen, *[component for component, _ in refresh]]
    transcribe_button.click(shows_errors(lambda r: transcribe(studio, r)), recording, [transcript, status, alignment],
                            api_name="transcribe_voice")
    align_button.click(shows_errors(lambda r, t: align(studio, r, t)), [recording, transcript], [alignment, status],
                       api_name="align_transcript")
    saved = save_button.click(shows_errors(lambda *a: save_voice(studio, *a)), [name, recording, transcript, replace],
                              [status, alignment], api_name="save_voice")
    saved.success(listing, None, listed, api_visibility="private")
    play_button.click(shows_errors(lambda n: play(studio, n)), chosen, [player, status], api_name="play_voice")
    delete_button.click(shows_errors(ask), chosen, [confirm_row, status], api_visibility="private")
    chosen.change(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")  # asked for another
    keep_button.click(lambda: (gr.update(visible=False), "nothing was deleted"), None, [confirm_row, status],
                      api_visibility="private")
    deleted = confirm_button.click(shows_errors(lambda n: delete_voice(studio, n)), chosen, status,
                                   api_name="delete_voice")
    deleted.then(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    deleted.success(listing, None, listed, api_visibility="private")
    return {"listing": listing, "listed": listed}
