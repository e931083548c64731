"""Evaluation of voices: does a model (+ adapter, + voice prefix) speak the prompt, in the target
voice, steadily across seeds? `ClipScorer` scores one clip; `dia2.evaluation.run` speaks prompt
sets with each configuration; `dia2-eval` (`dia2.evaluation.cli`) is the command."""

from dia2.evaluation.scoring import ClipScorer, ClipScores

__all__ = ["ClipScorer", "ClipScores"]
