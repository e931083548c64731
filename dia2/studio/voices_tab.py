"""The Voices tab: make a voice from a recording (its transcript shown, to correct before saving),
list, play and delete voices. It works on the speech server's voices folder through the same
`VoiceStore`, so the same checks apply (decodable, 1-30 s, not silent, not clipped, words heard)
and the server serves what is made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dia2.studio.runtime import Studio, StudioError, read_recording, shows_errors

COLUMNS = ["name", "kind", "speakers", "transcript"]


def voice_table(studio: Studio) -> list[list[Any]]:
    """One row per stored voice (the OpenAI aliases, which are not stored, left out)."""
    rows = []
    for v in studio.voices.list():
        if v.builtin:
            continue
        kind = " + ".join(k for k, present in (("recording", v.voice is not None), ("adapter", v.adapter is not None)) if present)
        rows.append([v.name, kind, v.speakers, v.transcript])
    return rows


def transcribe(studio: Studio, recording: str | None) -> tuple[str, str]:
    """What Whisper hears in a recording (checked as an upload is), to correct before saving."""
    wave = read_recording(recording, studio.sample_rate, "the recording")[1]
    voice = studio.make_voice(wave)
    if not voice.words:
        raise StudioError("no words were heard in the recording: record the speaker talking")
    heard = " ".join(w.text for w in voice.words)
    return heard, f"heard {len(voice.words)} word(s): correct the transcript if needed (same number of words), then save"


def save_voice(studio: Studio, name: str, recording: str | None, transcript: str | None, replace: bool) -> str:
    """Store the recording as voice `name` (with the corrected transcript, if given)."""
    name = (name or "").strip()
    if not name:
        raise StudioError("give the voice a name (letters, digits, '-', '_' or '.')")
    data, wave = read_recording(recording, studio.sample_rate, "the recording")
    given = (transcript or "").strip() or None
    if given is not None:
        # Refused before anything is stored: the store would keep the heard words instead.
        heard = [w.text for w in studio.make_voice(wave).words]  # Transcribe's result, kept by the studio
        if heard and len(given.split()) != len(heard):
            raise StudioError(f"the transcript has {len(given.split())} word(s) but {len(heard)} were heard "
                              f"({' '.join(heard)}): correct it word for word (each word keeps its heard timing), "
                              "or clear it to save the heard words; nothing was saved")
    stored = studio.voices.add(name, data, transcript=given, replace=bool(replace))
    return f"voice '{name}' saved: {' '.join(w.text for w in stored.voice.words)}"


def recording_of(studio: Studio, name: str | None) -> str | None:
    """The file a stored voice was made from (None for an adapter voice)."""
    if not name:
        raise StudioError("choose a voice to play")
    stored = studio.voices.get(name)
    files = sorted(Path(studio.voices.folder, stored.name).glob("speaker_1.*"))
    return str(files[0]) if files else None


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
        with gr.Column():
            gr.Markdown("### Make a voice\nA 1-30 s recording of one speaker talking.")
            recording = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                 elem_id="voice-recording")
            transcribe_button = gr.Button("Transcribe", elem_id="voice-transcribe")
            transcript = gr.Textbox(label="Transcript (correct it before saving)", lines=2, elem_id="voice-transcript")
            name = gr.Textbox(label="Voice name", elem_id="voice-name")
            replace = gr.Checkbox(label="Replace a voice of that name", value=False)
            save_button = gr.Button("Save voice", variant="primary", elem_id="voice-save")
            status = gr.Markdown(elem_id="voice-status")
        with gr.Column():
            gr.Markdown("### Stored voices")
            table = gr.Dataframe(value=voice_table(studio), headers=COLUMNS, interactive=False, elem_id="voice-table")
            chosen = gr.Dropdown([v[0] for v in voice_table(studio)], label="Voice", elem_id="voice-chosen",
                                 allow_custom_value=True)
            with gr.Row():
                play_button = gr.Button("Play")
                delete_button = gr.Button("Delete", variant="stop")
            player = gr.Audio(label="Recording", type="filepath", interactive=False)

    def listing() -> list[Any]:
        names = [v[0] for v in voice_table(studio)]
        return [voice_table(studio), gr.update(choices=names, value=None),
                *[gr.update(choices=choices()) for _, choices in refresh]]

    listed = [table, chosen, *[component for component, _ in refresh]]
    transcribe_button.click(shows_errors(lambda r: transcribe(studio, r)), recording, [transcript, status],
                            api_name="transcribe_voice")
    saved = save_button.click(shows_errors(lambda *a: save_voice(studio, *a)), [name, recording, transcript, replace],
                              status, api_name="save_voice")
    saved.success(listing, None, listed, api_visibility="private")
    play_button.click(shows_errors(lambda n: recording_of(studio, n)), chosen, player, api_name="play_voice")
    deleted = delete_button.click(shows_errors(lambda n: delete_voice(studio, n)), chosen, status, api_name="delete_voice")
    deleted.success(listing, None, listed, api_visibility="private")
    return {"listing": listing, "listed": listed}
