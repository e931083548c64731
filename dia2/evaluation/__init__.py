"""Evaluation of voices: does a model (+ adapter, + voice prefix) speak the prompt, in the target
voice, steadily across seeds? Shared with the trainer and the studio. Imports generation and the
layers below it, never serving or the studio.

    text.py           what a clip should say against what was heard: WER and CER
    speaker.py        speaker embeddings (resemblyzer): whose voice a clip sounds like
    scoring.py        `ClipScorer`: one clip's intelligibility, speaker similarity and behaviour
    inputs.py         prompts, references and adapters, each checked before anything runs
    run.py            every prompt with every configuration and seed, scored and aggregated
    report.py         eval.json and report.html
    cli.py            `dia2-eval`, the command
"""

from dia2.evaluation.scoring import ClipScorer, ClipScores

__all__ = ["ClipScorer", "ClipScores"]
