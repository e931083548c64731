"""Publish a trained voice adapter to the Hugging Face Hub, with its model card.

    python -m finetune.push runs/my-voice --repo me/my-voice-lora [--public] [--dry-run]

Uploads the run's adapter/ folder (PEFT files, dia2_voice.json, README.md model card), the
samples of its last evaluation (as samples/sample_i.wav) and loss.png, in one commit. The token
comes from the usual Hugging Face sources (HF_TOKEN, `hf auth login`) or --token. --dry-run
writes the card and lists the upload without contacting the Hub. A voice is only published with
a consent statement (output.consent when training, or --consent here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dia2.errors import Dia2Error, report
from finetune.card import model_card
from finetune.outputs import RunPaths, read_voice_file, write_voice_file


class PushError(Dia2Error, RuntimeError):
    """An upload that cannot go ahead; the message says what to do."""


def upload_plan(run: Path) -> list[tuple[Path, str]]:
    """(local file, path in the repo) of everything a push uploads, in upload order."""
    paths = RunPaths(run)
    if not (paths.adapter / "adapter_config.json").is_file():
        raise PushError(f"{run} has no adapter/ folder with adapter_config.json: pass the folder of a finished LoRA run")
    plan = [(f, f.name) for f in sorted(paths.adapter.iterdir()) if f.is_file()]
    voice = read_voice_file(paths.adapter)
    plan += [(run / s["file"], f"samples/{Path(s['file']).name}") for s in voice.get("samples", [])]
    if paths.loss_png.is_file():
        plan.append((paths.loss_png, paths.loss_png.name))
    return plan


def push_run(
    run: str | Path,
    repo: str,
    private: bool = True,
    dry_run: bool = False,
    token: str | None = None,
    consent: str | None = None,
) -> list[tuple[Path, str]]:
    """Write the model card for `repo` and upload the adapter (or only list it, when dry_run)."""
    run = Path(run)
    adapter = RunPaths(run).adapter
    try:
        voice = read_voice_file(adapter)
    except FileNotFoundError as exc:
        raise PushError(str(exc)) from exc
    voice.pop("format", None)
    if consent:
        voice["consent"] = consent
        write_voice_file(adapter, voice)
    if not voice.get("consent"):
        raise PushError(
            "no consent statement: a voice is published only with one. Set output.consent when training or pass "
            "--consent 'The speakers agreed to ...'"
        )
    (adapter / "README.md").write_text(model_card(voice, repo), encoding="utf-8")
    plan = upload_plan(run)
    missing = [str(local) for local, _ in plan if not local.is_file()]
    if missing:
        raise PushError(f"files to upload are missing: {', '.join(missing)}")
    if dry_run:
        return plan
    _upload(plan, repo, private, token)
    return plan


def _upload(plan: list[tuple[Path, str]], repo: str, private: bool, token: str | None) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=remote, path_or_fileobj=str(local)) for local, remote in plan]
        api.create_commit(repo, operations=operations, commit_message="Upload Dia2 voice adapter")
    except (HfHubHTTPError, OSError) as exc:
        raise PushError(f"upload to {repo} failed: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder (runs/<name>) of a finished LoRA run")
    parser.add_argument("--repo", required=True, help="Hub repo id to create or update, e.g. me/my-voice-lora")
    parser.add_argument("--public", action="store_true", help="create the repo public (default private)")
    parser.add_argument("--dry-run", action="store_true", help="write the card and list the upload, upload nothing")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--consent", help="consent statement of the speakers (default: the one given when training)")
    args = parser.parse_args(argv)
    try:
        plan = push_run(args.run, args.repo, not args.public, args.dry_run, args.token, args.consent)
    except Dia2Error as exc:
        return report("push", exc)
    listing = [{"file": str(local), "path_in_repo": remote, "bytes": local.stat().st_size} for local, remote in plan]
    verb = "would upload" if args.dry_run else "uploaded"
    print(json.dumps({"repo": args.repo, "dry_run": args.dry_run, verb: listing}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
