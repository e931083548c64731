"""Generation: from a script (and a voice) to Mimi codes, one frame at a time.

In the order a frame is made: `config` (`GenerationConfig`, every default once) -> `sampling`
(per-row settings, CFG, counter-keyed draws) -> `kernels` (a frame's tensor work: `FrameKernels`
for one utterance, `BatchKernels` for a serving batch) -> `graphs` (CUDA graphs and
torch.compile around the kernels, from outside) -> `loop` (the host side: `UtterancePlan`,
`Utterance`, `FrameLoop`) -> `long_form` (scripts longer than one generation, in parts) ->
`runtime` (the `Dia2` Python API). `voice` makes voice prefixes.
"""
