"""Generation: sampling and CFG, the frame loop, voices and their prefixes, CUDA graphs, and the
`Dia2` Python API."""
