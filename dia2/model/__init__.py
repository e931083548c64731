"""The network and its weights: config.json parsing, `Dia2Model`, checkpoint and asset
loading, LoRA adapters, 8/4-bit quantization."""
