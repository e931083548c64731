"""The network and its weights. Imports nothing of dia2 but `dia2.errors`: no text, audio or tokenizer.

    config.py         config.json -> frozen `Dia2Config` (spec section 2); FRAME_RATE, SAMPLE_RATE
    layers.py         attention, MLP, norms, rotary embedding: the blocks both stacks share
    network.py        `Dia2Model`: forward / prefill / step / depformer_inputs + depformer_step; `from_pretrained`
    checkpoint.py     weight files: find them (with the manifest), check, stream in, write
    assets.py         where a model's files are: a local folder or a Hub repo id, its manifest
    adapter_files.py  a LoRA adapter folder read without PEFT or torch
    adapters.py       LoRA adapters on a Dia2Model in PEFT's format: load merged or live
    lora_bank.py      several adapters side by side, one per batch row (serving)
    row_weights.py    what an adapter replaces outright (embedding rows, whole heads), per batch row
    peft_api.py       PEFT's names, imported without bitsandbytes
    quant.py          low-VRAM mode: bitsandbytes 8-bit and 4-bit linear layers
"""
