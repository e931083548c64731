"""Data prep for Dia2 voice adaptation: speaker recordings -> transcribed, Mimi-tokenized corpus.

    dia2-prep recordings/ corpus/          (or: python -m data_prep recordings/ corpus/)

Stages (one module each): `sources` (folders, manifests, speakers) -> `audio` (chunked reading)
-> `transcribe` (faster-whisper) -> `segment` (utterances at pauses) -> `recording` (filters,
shared alignment, Mimi encoding) -> `cache` (per-file results, resumable) -> `writer` (the
`datasets` corpus of `dia2.data.corpus`) and `qc` (the report). `pipeline.run_prep` runs them
(`pipeline.check_run`: the check-only run, `--check`): `work` holds the steps of one process
(load the models, prepare through the cache, write), which `shards` runs per process under a
launcher (`distributed`: how the processes share out and report, the shared filesystem check).
`config` holds every option, `cli` is the command; `results` (what one recording yields, and what
was left out), `reference` (reference text against the transcript) and `timing` (wall time per
stage) serve them. Imports `dia2` only.

Stages for real recordings, each optional: `analysis` reads a recording once before it is
transcribed, for `vad` (silero-vad speech regions, cut boundaries), `quality` (DNSMOS windows, the
filter) and `diarize` with `speaker_clusters` (mono dialogues: who speaks when); `recording` then
refines each cut with them and brings it to one level with `loudness` (BS.1770 level and
true-peak limiting).
"""
