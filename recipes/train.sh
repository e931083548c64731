# Shared by the recipes (sourced): train an adapter, and name the base a run was trained on.
# Needs PY, ACCELERATE, NUM_PROCESSES, OUT set by the recipe.

# train_adapter PRESET NAME [key=value ...]: a LoRA run on corpora/NAME into runs/NAME.
# One process runs without a launcher (Ctrl-C then prints one line: where to resume); several go
# through accelerate launch, with its settings given so that it prints no defaults warning.
train_adapter() {
    local preset=$1 name=$2
    shift 2
    local launch=("$PY")
    if (( NUM_PROCESSES > 1 )); then
        launch=("$ACCELERATE" launch --quiet --multi_gpu --num_processes "$NUM_PROCESSES" --num_machines 1 --mixed_precision no --dynamo_backend no)
    fi
    "${launch[@]}" finetune/train.py --config "$preset" data.corpus="$OUT/corpora/$name" output.dir="$OUT/runs" output.name="$name" "$@"
}

# trained_base NAME: the model.base of runs/NAME (what dia2-infer --model takes).
trained_base() {
    $PY -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['model']['base'])" "$OUT/runs/$1/config.yaml"
}
