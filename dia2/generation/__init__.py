"""Generation: one utterance at a time on one model. Imports the layers below it (model, text,
audio, data, tiny), never serving or above.

    config.py         `GenerationConfig`: every generation default, defined once
    sampling.py       sampling and classifier-free guidance, for many rows at once
    loop.py           the frame loop (spec section 6): entries -> audio codes, one column a step
    graphs.py         CUDA graphs and torch.compile, wrapped around the loop's kernels
    voice.py          voice prefixes: recorded speech that conditions what follows
    long_form.py      scripts longer than one generation, spoken in parts that carry the voice
    tts.py            the Python API: `Dia2.from_repo`, `generate`, `stream`, `make_voice`
"""
