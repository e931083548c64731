"""Publish a trained voice adapter to the Hugging Face Hub, with its model card.

    python -m finetune.push runs/my-voice --repo me/my-voice-lora [--public] [--dry-run]

Uploads the run's adapter/ folder, a voice folder (PEFT files, voice.json, README.md model card:
`dia2.generation.voice`), the samples of its last evaluation (as samples/sample_i.wav) and
loss.png, in one commit. The token
comes from the usual Hugging Face sources (HF_TOKEN, `hf auth login`) or --token. --dry-run
lists the upload and prints the model card without contacting the Hub. A voice is only published
with a consent statement (output.consent when training, or --consent here). The repo id, the run
folder, the consent and the token are checked before anything else, without loading torch.

The run folder is the record of the training and is never changed: the model card (titled for
the target repo) and voice.json (with a --consent given here) are generated in memory for the
upload, so a dry run, a failed push or a push to another repo leave the run as it was. A run
from before the one voice format (dia2_voice.json) uploads its voice in the one format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia2.errors import PushError
from dia2.generation.voice import LEGACY_RUN_FILE, VOICE_FILE, Voice, VoiceError, voice_record
from dia2.launch.command import run_main
from dia2.model.assets import hub_repo_id_problem
from finetune.card import model_card
from finetune.run_folder import RunPaths, finished_runs, read_run_voice

CARD_FILE = "README.md"


@dataclass(frozen=True)
class Upload:
    """One file of a push: a file of the run, or content generated for this push (card, voice file)."""

    path_in_repo: str
    source: Path | bytes

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    def listing(self) -> dict[str, Any]:
        local = "(generated for this push)" if isinstance(self.source, bytes) else str(self.source)
        return {"file": local, "path_in_repo": self.path_in_repo, "bytes": self.size}


def upload_plan(run: Path, voice: Voice, card: str) -> list[Upload]:
    """Everything a push uploads, in upload order: the adapter files with `voice` and `card` as
    its voice.json and README.md, the last samples, and loss.png."""
    paths = RunPaths(run)
    if not (paths.adapter / "adapter_config.json").is_file():
        raise PushError(f"{run} has no adapter/ folder with adapter_config.json: pass the folder of a finished LoRA run")
    record = json.dumps(voice_record(voice, paths.adapter), indent=1) + "\n"
    generated = {VOICE_FILE: record.encode(), CARD_FILE: card.encode()}
    # An older run's record file is uploaded as voice.json, in the one format.
    files = {f.name for f in paths.adapter.iterdir() if f.is_file() and f.name != LEGACY_RUN_FILE}
    plan = [Upload(name, generated.get(name, paths.adapter / name)) for name in sorted(files | set(generated))]
    plan += [Upload(f"samples/{Path(s['file']).name}", run / s["file"]) for s in voice.run.get("samples", [])]
    if paths.loss_png.is_file():
        plan.append(Upload(paths.loss_png.name, paths.loss_png))
    return plan


def push_run(
    run: str | Path,
    repo: str,
    private: bool = True,
    dry_run: bool = False,
    token: str | None = None,
    consent: str | None = None,
) -> list[Upload]:
    """Upload the adapter with a model card for `repo` (or only list the upload, when dry_run).
    Nothing in the run folder is written. Every check (repo id, run folder, consent, token) comes
    before anything is read from the Hub."""
    run = Path(run)
    problem = hub_repo_id_problem(repo)
    if problem is not None:
        raise PushError(f"--repo {repo}: {problem}")
    voice = read_finished_run(run)
    record = dict(voice.run)
    if consent:
        record["consent"] = consent
    if not record.get("consent"):
        raise PushError(
            "no consent statement: a voice is published only with one. Set output.consent when training or pass "
            "--consent 'The speakers agreed to ...'"
        )
    if not dry_run:
        token = hub_token(token)
    plan = upload_plan(run, dataclasses.replace(voice, run=record), model_card(record, repo))
    missing = [str(u.source) for u in plan if isinstance(u.source, Path) and not u.source.is_file()]
    if missing:
        raise PushError(f"files to upload are missing: {', '.join(missing)}")
    if dry_run:
        return plan
    _upload(plan, repo, private, token)
    return plan


def read_finished_run(run: Path) -> Voice:
    """The voice run folder `run` yielded (its adapter folder); a PushError that names the finished
    runs beside it when `run` does not exist or did not finish."""
    beside = finished_runs(run.parent)
    listed = f"finished runs in {run.parent}: {', '.join(beside)}" if beside else f"{run.parent} holds no finished run"
    if not run.is_dir():
        raise PushError(f"run folder {run} does not exist; {listed}")
    try:
        return read_run_voice(RunPaths(run).adapter)
    except FileNotFoundError:
        raise PushError(f"{run} is not a finished LoRA run (it has no adapter/{VOICE_FILE}); {listed}") from None
    except VoiceError as exc:
        raise PushError(f"{run}: its adapter's voice cannot be read: {exc}") from None


def hub_token(token: str | None) -> str:
    """The token to upload with: `token`, else the stored login or HF_TOKEN."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token")
    return token


def _upload(plan: list[Upload], repo: str, private: bool, token: str) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        operations = [
            CommitOperationAdd(
                path_in_repo=u.path_in_repo, path_or_fileobj=u.source if isinstance(u.source, bytes) else str(u.source)
            )
            for u in plan
        ]
        api.create_commit(repo, operations=operations, commit_message="Upload Dia2 voice adapter")
    except (HfHubHTTPError, OSError) as exc:
        raise PushError(f"upload to {repo} failed: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder (runs/<name>) of a finished LoRA run")
    parser.add_argument("--repo", required=True, help="Hub repo id to create or update, e.g. me/my-voice-lora")
    parser.add_argument("--public", action="store_true", help="create the repo public (default private)")
    parser.add_argument("--dry-run", action="store_true", help="list the upload and print the model card, upload nothing")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--consent", help="consent statement of the speakers (default: the one given when training)")
    return run_main("push", lambda: parser.parse_args(argv), push, parser=parser)


def push(args: argparse.Namespace) -> int:
    """The command: push (or list) the upload, and print what was (or would be) uploaded."""
    plan = push_run(args.run, args.repo, not args.public, args.dry_run, args.token, args.consent)
    listing = [upload.listing() for upload in plan]
    verb = "would upload" if args.dry_run else "uploaded"
    print(json.dumps({"repo": args.repo, "dry_run": args.dry_run, verb: listing}, indent=1))
    if args.dry_run:
        card = next(u.source for u in plan if u.path_in_repo == CARD_FILE)
        print(f"\n--- {CARD_FILE}, the model card this push would upload ---\n{card.decode()}--- end of {CARD_FILE} ---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
