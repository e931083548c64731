"""Generation: from a script (and a voice) to Mimi codes, one frame at a time, on one model.
Imports the layers below it (model, text, audio, data, tiny), never serving or above.

    config.py         `GenerationConfig`: every generation default, defined once
    sampling.py       sampling and classifier-free guidance, per-row settings, counter-keyed draws
    kernels.py        a frame's tensor work: `FrameKernels` for one utterance, `BatchKernels` for a
                      serving batch, side by side
    graphs.py         CUDA graphs and torch.compile, wrapped around the kernels from outside
    loop.py           the host side (spec section 6): `UtterancePlan`, `Utterance`, `FrameLoop`
    prefix.py         voice prefixes (`VoicePrefix`): recorded speech that conditions what follows
    voice.py          the product's unit, `Voice` (a prefix and/or an adapter, default settings),
                      in one folder format: `read_voice`, `write_voice`
    long_form.py      scripts longer than one generation, spoken in parts that carry the prefix
    tts.py            the Python API: `Dia2.from_repo`, `generate`, `stream`, `make_prefix`
"""
