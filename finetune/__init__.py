"""The Dia2 trainer: LoRA / QLoRA / full fine-tuning on a data-prep corpus.

Entry points: `accelerate launch finetune/train.py --config configs/train/<preset>.yaml [key=value ...]`
(`--check`: check the command line and inputs only, printing the files the run will write)
and `python -m finetune.push RUN --repo USER/NAME [--dry-run]` (and `python -m finetune.language_report
CORPUS`: how well the tokenizer covers a corpus's language). Modules, by concern: train (the
loop and the command), config (the schema) and config_file (YAML, overrides, --help), data (corpus
-> batches), losses, schedule (the learning rate, across resumes), modeling (base + adapters),
evaluation, checkpoint, run_folder (a run's layout, read without torch) and outputs (run folder,
adapter, merged export, loss curve), card and push (the Hub), tracking (wandb / tensorboard).
Imports `dia2` only, never `data_prep`.
"""
