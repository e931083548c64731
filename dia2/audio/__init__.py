"""Audio and the Mimi codec. Imports `dia2.model`, `dia2.text` and the shared basics only.

    codec.py          `MimiCodec`: 24 kHz waveform <-> codes at 12.5 frames/s, its fingerprint
    codec_stream.py   frame-by-frame Mimi decoding equal to a one-shot decode
    io.py             reading (any container) and writing audio files, resampling
    encode.py         encodings for files and streams: mp3, Opus, AAC, FLAC, wav, pcm
    recordings.py     finding recordings in a folder (data prep's input, dia2-eval's references)
    asr.py            speech -> timed words: the one faster-whisper wrapper
    whisper_offline.py  the Whisper models that ship on PyPI (`--asr-model base-offline`)
    activity.py       where a recording holds speech, by frame energy
    dnsmos.py         DNSMOS P.835 speech quality
"""
