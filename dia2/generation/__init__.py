"""Generation: sampling and CFG, the frame loop, voice prefixes, CUDA graphs, and the
`Dia2` Python API."""
