"""`compress`: the command line. `main(argv) -> int` is testable in-process.

    compress --teacher model.pt --budget 5ms            # the main job
    compress example-teacher --out teacher.pt           # train the built-in example teacher
    compress example-lm-teacher --out gpt/              # train the example GPT-2 on the Python docs
    compress profile model.onnx --profile host-cpu-1t   # measure any ONNX file
    compress profiles                                   # list hardware profiles
    compress pick runs/x --budget 3ms --profile host-cpu-1t
    compress report runs/x                              # render a run's report again

Errors the user can fix print one line and exit 2 (usage/input) or 3 (no model
meets the budget); `--debug` shows tracebacks instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Sequence

from ._version import __version__
from .errors import EXIT_INTERNAL, EXIT_USAGE, CompressorError
from .files import first_line

SUBCOMMANDS = ("example-teacher", "example-lm-teacher", "profile", "profiles", "pick", "report", "search-worker", "run")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (not the usage block),
    and a value such as `--budget -1ms` reaches its option (and its check) instead of being
    taken for an unknown option: no option here starts with '-' and a digit."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"compress: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


_EPILOG = """\
examples:
  compress --teacher teacher.pt --budget 2ms
  compress --teacher model.pt2 --budget 800us --profile host-cpu --out runs/mine
  compress --teacher teacher.pt --budget 0.5x     # half the teacher's own latency on the profile
  compress --teacher weights.pt --arch mypkg.models:resnet_small --budget 5ms --data data.npz
  compress --teacher timm:resnet18 --weights ckpt.pth --budget 0.25x --data images/
  compress --config compress.toml --resume --out runs/mine
  compress --teacher gpt/ --data python-docs.txt --budget 0.5x   # a GPT-2 model folder and its text
  torchrun --nproc-per-node 2 -m compressor --teacher teacher.pt --budget 0.5x   # distil on 2 processes

other commands (each has --help):
  compress example-teacher --out teacher.pt    train the built-in example teacher (digits, ~1 min)
  compress example-lm-teacher --out gpt/       train the example GPT-2 on the Python documentation (~5 min)
  compress profile model.onnx --profile host-cpu-1t   measure an ONNX file's latency
  compress profiles                            list hardware profiles (measured / predicted)
  compress pick RUN_DIR --budget 3ms --profile host-cpu-1t   print the best size for a budget

  compress report RUN_DIR                      render a finished run's report and model cards again
  compress report RUN_DIR --mlflow URI         ... and log the run to MLflow
  compress search-worker --storage URL --study NAME   score search trials of a run sharing its study

output: progress and logs go to stderr (bars on a terminal, one line per stage, trial, epoch and size
otherwise); --json prints a machine-readable summary on stdout.

environment:
  COMPRESSOR_CACHE_DIR     where latency calibrations are cached (default $XDG_CACHE_HOME/compressor,
                           else ~/.cache/compressor); one per machine, profile and input shape
  COMPRESSOR_PROFILES_DIR  folder of hardware profiles looked up by name (default: the built-in ones)
  COMPRESSOR_CRASH_AT      fault testing only: POINT[@N] kills the run the N-th time it passes POINT
                           (under torchrun, COMPRESSOR_CRASH_RANK=R keeps it to rank R)
  COMPRESSOR_STUDY_HEARTBEAT_S, COMPRESSOR_STUDY_GRACE_S
                           a shared study's worker heartbeat (default 60 s) and how long a silent worker's
                           trial waits before another worker scores it again (default 180 s)
  NO_COLOR                 plain, uncoloured output

exit codes: 0 a model meets the budget; 3 none does (the report says how close the best came);
2 bad input or usage; 1 internal error; 130 stopped (Ctrl-C, SIGTERM): rerun with --resume.
--mlflow failing to log changes none of them (an error line; `compress report RUN_DIR --mlflow URI` retries).
"""


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="compress",
        description="Compress a trained PyTorch teacher into several servable sizes that fit a latency budget: "
                    "search students without training, distil a nested family in one run, prune, export to "
                    "ONNX and measure every size.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", metavar="PATH",
                   help="trained model: TorchScript archive (torch.jit.save), torch.export program (.pt2), "
                        "state_dict (with --arch), pickled module (with --trust-pickle), or a model zoo name "
                        "with --weights (timm:NAME, torchvision:NAME), or a Hugging Face GPT-2-family model folder "
                        "(save_pretrained, tokenizer beside it) for language models. e.g. --teacher teacher.pt")
    p.add_argument("--budget", metavar="LATENCY",
                   help="latency budget per batch on the target profile: a latency with a unit (us, ms, s), "
                        "e.g. --budget 5ms, or a fraction of the teacher's latency there, e.g. --budget 0.5x")
    p.add_argument("--data", metavar="SPEC",
                   help="'digits' (built in, default), 'mnist1d', a .npz file with x/y arrays, or a folder with "
                        "one subfolder of images per class; for a language-model teacher a text file or a folder of text files. "
                        "e.g. --data train.npz")
    p.add_argument("--profile", metavar="NAME|PATH",
                   help="hardware profile the budget applies to (default host-cpu-1t); see `compress profiles`. "
                        "e.g. --profile raspberry-pi-5")
    p.add_argument("--also-profile", dest="also_profile", action="append", metavar="NAME|PATH",
                   help="also report latency on this profile (repeatable). e.g. --also-profile jetson-orin-nano")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/). e.g. --out runs/exp1")
    p.add_argument("--config", metavar="FILE",
                   help="TOML or JSON file with any of these options (flags override it). e.g. --config compress.toml")
    p.add_argument("--seed", type=int, help="random seed for data split, search and training (default 0)")
    p.add_argument("--arch", metavar="MODULE:FACTORY",
                   help="builds the network for a state_dict teacher. e.g. --arch mypkg.nets:make_cnn")
    p.add_argument("--arch-kwargs", metavar="JSON",
                   help="keyword arguments for the --arch factory or the zoo model builder, as a JSON object. "
                        "e.g. --arch-kwargs '{\"num_classes\": 10}'")
    p.add_argument("--weights", metavar="PATH",
                   help="trained weights (state_dict or training checkpoint) of a zoo teacher. "
                        "e.g. --teacher timm:resnet18 --weights ckpt.pth")
    p.add_argument("--trust-pickle", action="store_true", default=None,
                   help="allow loading a whole pickled nn.Module (unpickling runs arbitrary code)")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="per-sample input shape; default: inferred from the data. e.g. --input-shape 1,32,32")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="resize built-in digits / image folders to NxN (default 32)")
    p.add_argument("--method", choices=("nested", "skeleton"),
                   help="'nested' (default): architecture search + one nested Teacher->TA->students run; "
                        "'skeleton': fixed width ratios, one student")
    p.add_argument("--sizes", metavar="R,R,...",
                   help="width ratios of the nested sizes (default: 4 chosen from the budget). e.g. --sizes 1,0.5,0.25")
    p.add_argument("--epochs", type=int,
                   help="distillation epochs (default 12 for sizes cut from the teacher, 48 for a family from "
                        "random weights, which is still learning at 12). 24 lifted zoo teachers' cuts by 0.65 "
                        "points on average")
    p.add_argument("--steps", type=int, metavar="N",
                   help="language models: training steps of --batch-size windows of 128 tokens (default: --epochs "
                        "passes over the text). e.g. --steps 150")
    p.add_argument("--schedule", choices=("sandwich", "chain"),
                   help="nested distillation: 'sandwich' (default): every step trains the TA, the smallest size and "
                        "one other; 'chain': every step trains one size, the teacher teaching the TA and the TA the "
                        "students (about 0.4x the time per epoch; give it 1.5x the --epochs)")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false", default=None,
                   help="nested distillation: run every planned epoch; by default a run of 24 or more epochs "
                        "(a family from random weights, or --epochs 24) whose sizes' validation accuracy stops "
                        "improving anneals its learning rate over an eighth of its epochs and ends there")
    p.add_argument("--train-precision", choices=("auto", "fp32", "bf16"),
                   help="distillation's forward passes (image/1-D runs): 'auto' (default): bfloat16 on a CPU with AMX tiles or "
                        "AVX-512 BF16 (about 2x faster there), float32 elsewhere; weights, gradients and losses stay float32, "
                        "and the manifest records which ran")
    p.add_argument("--lm-recipe", choices=("chain", "sampled", "all"),
                   help="language models: 'chain' (default): one size per step, the teacher teaching the TA and the "
                        "TA the students; 'sampled': one size per step, all taught by the teacher; 'all': every size "
                        "every step")
    p.add_argument("--lm-taid", action="store_true", default=None,
                   help="language models: TAID's interpolated target for every distillation term (from the size's "
                        "own prediction towards its teacher's over the run; arXiv 2501.16937)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    p.add_argument("--trials", type=int, help="architecture search trials (default 24)")
    p.add_argument("--spaces", metavar="NAME,...",
                   help="search spaces: teacher_scaled, cnn, transformer (default teacher_scaled,cnn)")
    p.add_argument("--proxy", help="training-free proxy ranking students (default: diswot_inherited+params, DisWOT against the trained teacher rank-averaged with params); also ensemble (DisWOT+SNIP+params), diswot, snip, synflow, naswot, zico, swap, params, ... or a+b")
    p.add_argument("--sampler", help="Optuna sampler: nsga2 (default) or tpe")
    p.add_argument("--losses", metavar="NAME[:W],...",
                   help="extra distillation losses on the student-teacher term, from the loss zoo: kd, dkd, ttm, "
                        "fitnets, sp, rkd, diswot_semantic; optional weight after ':'. e.g. --losses dkd:0.5,rkd")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by search workers: sqlite:///x.db, postgresql://..., or a journal "
                        "file path (default: SQLite in the run folder)")
    p.add_argument("--study", metavar="NAME",
                   help="the study's name in --storage, for `compress search-worker --study NAME` to join "
                        "(default student-search)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out: finished stages, trials and epochs are not redone")
    p.add_argument("--calibration-models", type=int, metavar="N",
                   help="models timed (once per machine, then cached) to fit the host latency predictor "
                        "(default 16)")
    p.add_argument("--verify-top", type=int, metavar="N",
                   help="before distillation, export and time (untrained, a few seconds) the N best in-budget "
                        "search candidates and the planned nested sizes on the profile, and re-select when a "
                        "measurement misses the budget the prediction met (default 3; 0 = off; skipped on a "
                        "predicted-only profile). e.g. --verify-top 5")
    p.add_argument("--anchor-students", type=int, metavar="N",
                   help="before the search, export and time (untrained, seconds) N students cut from the teacher "
                        "at spread-out sizes, and correct the latency predictor on them and the teacher: zoo "
                        "operator mixes (SE, concat, attention) run slower than it predicts (default 4, at most 6; "
                        "0 = off; skipped on a predicted-only profile)")
    p.add_argument("--int8", action="store_true", default=None,
                   help="also write an INT8 ONNX model per size (static quantization, reported next to fp32)")
    p.add_argument("--formats", metavar="NAME,...",
                   help="deployment formats per size: onnx (always), ort (ONNX Runtime Mobile .ort), openvino "
                        "(OpenVINO IR .xml/.bin), executorch (.pte, XNNPACK); each is parity-checked against "
                        "PyTorch and timed on this host, and one that cannot be made says why in the manifest. "
                        "e.g. --formats onnx,ort,openvino,executorch")
    p.add_argument("--tensorrt", action="store_true", default=None,
                   help="also build an fp16 TensorRT engine per size where TensorRT and a CUDA GPU are present "
                        "(elsewhere the manifest says why none was built)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="where the search proxies and the distillation run (default cpu; auto: cuda where a GPU "
                        "is available); exports and latencies are made from CPU copies either way. Under "
                        "torchrun each rank takes the GPU of its LOCAL_RANK")
    p.add_argument("--license", metavar="ID",
                   help="the teacher's licence, stated in each model card's Hugging Face front matter "
                        "(default: other, i.e. not stated). e.g. --license apache-2.0")
    p.add_argument("--mlflow", metavar="URI",
                   help="log the finished run to this MLflow tracking server: config as params, one child run "
                        "per size with its figures, the selected size as a tag, manifest, report, cards and the "
                        "selected ONNX as artefacts (experiment: $MLFLOW_EXPERIMENT_NAME, default compress; "
                        "needs pip install 'compressor[mlflow]'). A failure to log keeps the run and its exit code. "
                        "e.g. --mlflow sqlite:///mlflow.db")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and --json)")
    p.add_argument("-v", "--verbose", action="store_true", help="also log the package's decisions (INFO)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary on stdout: run folder, selected size and its figures, "
                        "every size (logs stay on stderr)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    p.add_argument("--version", action="version", version=f"compress {__version__}")
    return p


_CLI_ONLY = ("config", "debug", "quiet", "verbose", "json")  # how to print, not what to run


def _run(argv: Sequence[str]) -> int:
    from .config import coerce, load_config_file, resolve_config

    args = _run_parser().parse_args(list(argv))
    file_values = load_config_file(args.config) if args.config else {}
    cli = {k: v for k, v in vars(args).items() if k not in _CLI_ONLY and v is not None}
    for key in ("input_shape", "sizes", "spaces", "also_profile", "losses", "budget", "arch_kwargs", "formats"):
        if key in cli:
            cli[key] = coerce(key, cli[key], "command line")
    cfg = resolve_config(file_values, cli)
    from rich.console import Console

    from . import (
        pipeline,  # heavy (torch, onnxruntime, optuna): only once the options are known good
    )

    result = pipeline.run(cfg, console=Console(stderr=True, quiet=args.quiet))
    if args.json and result.manifest:  # under torchrun only rank 0 has a run to summarise
        summary = json_summary(result.manifest, result.run_dir, result.exit_code)
        if result.tracking:  # with --mlflow: the MLflow run, or why logging failed
            summary["mlflow"] = result.tracking
        print(json.dumps(summary, indent=2))
    return result.exit_code


def json_summary(manifest: dict, run_dir: Path, exit_code: int) -> dict:
    """What a script needs from a run, for `--json`: where it is, what was picked, and every size."""
    budget = manifest["budget"]
    profile, stat = budget["profile"], budget["stat"]

    def size(m: dict) -> dict:
        lat = m["latency"].get(profile) or {}
        return {"name": m["name"], "accuracy": m["accuracy"], "latency_ms": lat.get(f"{stat}_ms"),
                "latency_measured": lat.get("measured"), "meets_budget": m["meets_budget"], "params": m["params"],
                "onnx": str(Path(run_dir) / m["files"]["onnx"])}

    sizes = [size(m) for m in manifest["models"]]
    return {"run_dir": str(run_dir), "exit_code": exit_code, "budget_met": manifest["budget_met"],
            "budget": {"ms": budget["ms"], "text": budget["text"], "profile": profile, "stat": stat},
            "selected": next((s for s in sizes if s["name"] == manifest["selected"]), None),
            "teacher": {"accuracy": manifest["teacher"]["accuracy"],
                        "latency_ms": (manifest["teacher"]["latency"].get(profile) or {}).get(f"{stat}_ms")},
            "sizes": sizes, "manifest": str(Path(run_dir) / "manifest.json"),
            "report": str(Path(run_dir) / "report.html")}


def _report(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress report",
                description="Render a finished run's report (report.md, report.html, plots) and model cards "
                            "again from its manifest, e.g. after upgrading this package.")
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument("--mlflow", metavar="URI",
                   help="then log the run to this MLflow tracking server, as `compress --mlflow` does "
                        "(e.g. after logging at the end of the run failed)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    from .manifest import read_manifest
    from .report import write_report

    run_dir = Path(args.run_dir)
    if args.mlflow is not None:
        from .tracking import require_mlflow

        require_mlflow(args.mlflow)  # before rendering anything
    manifest = read_manifest(run_dir)
    for path in write_report(run_dir, manifest):
        print(path)
    if args.mlflow is not None:
        from .tracking import log_run

        info = log_run(args.mlflow, run_dir, manifest)
        print(f"logged to MLflow: run {info['run_id']} in experiment {info['experiment']!r} ({info['uri']})",
              file=sys.stderr)
    return 0


def _search_worker(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress search-worker",
                description="Join the student search of a compress run that shares its study (--storage, --study): "
                            "score candidates until the study has its trials, then exit. Start any number, on "
                            "any machine that reaches the storage; the driving run waits for their trials.",
                epilog="example:\n  compress --teacher teacher.pt --budget 0.5x --storage postgresql://u@db/optuna "
                       "--study digits &\n  compress search-worker --storage postgresql://u@db/optuna --study digits",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True, metavar="URL",
                   help="the driving run's --storage: postgresql://..., mysql://..., sqlite:///x.db or a journal file")
    p.add_argument("--study", default="student-search", help="the driving run's --study (default student-search)")
    p.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                   help="how long to wait for the driving run to create the study (default 600)")
    p.add_argument("--teacher", metavar="PATH", help="the teacher here, where it lies elsewhere than on the driver")
    p.add_argument("--weights", metavar="PATH", help="a zoo teacher's weights here (see --teacher)")
    p.add_argument("--data", metavar="PATH", help="the data here (see --teacher)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    from .worker import join_search

    overrides = {k: getattr(args, k) for k in ("teacher", "weights", "data") if getattr(args, k)}
    result = join_search(args.storage, args.study, overrides=overrides, wait_s=args.wait,
                         progress=args.progress and not args.quiet)
    if not args.quiet:
        print(f"scored {result.scored} trials of study {result.study!r}; it holds {result.finished} of "
              f"{result.n_trials} ({result.seconds:.0f} s)")
    return 0


def _example_teacher(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress example-teacher",
                description="Train the built-in example teacher (a ~0.5M-parameter residual CNN) "
                            "on digits upsampled to 32x32 and save it as TorchScript.")
    p.add_argument("--out", default="teacher.pt", help="where to save it (default teacher.pt)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--image-size", type=int, default=32, help="input size NxN (default 32)")
    p.add_argument("--train-precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="the training steps' forward passes (default auto: bfloat16 on a CPU with AMX tiles or "
                        "AVX-512 BF16, float32 elsewhere); the saved teacher is float32 either way")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    from .example import train_example_teacher
    from .progress import Progress

    with Progress() as progress:
        info = train_example_teacher(Path(args.out), seed=args.seed, epochs=args.epochs,
                                     image_size=args.image_size, progress=progress,
                                     precision=args.train_precision)
    print(f"saved {info['path']}: {info['params']:,} parameters, validation accuracy "
          f"{info['val_accuracy']:.3f}, {info['seconds']:.0f} s ({info['precision']} training)")
    return 0


def _example_lm_teacher(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress example-lm-teacher",
                description="Train the example language model: a small GPT-2 (byte-level tokens) on the Python "
                            "documentation's topic texts (pydoc_data.topics, shipped with CPython), saved with "
                            "save_pretrained beside its tokenizer; the text is written to --corpus for --data.")
    p.add_argument("--out", default="gpt", help="model folder to write (default gpt)")
    p.add_argument("--corpus", default="python-docs.txt",
                   help="the training text, written here unless it exists (default python-docs.txt)")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks (default 4)")
    p.add_argument("--d-model", type=int, default=128, help="residual width (default 128)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of 16 x 128 tokens (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    for name in ("layers", "d_model", "heads", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1 but got {getattr(args, name)}")
    if args.d_model % args.heads:
        p.error(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")
    from .lm.example import train_example_lm_teacher
    from .progress import Progress

    with Progress() as progress:
        info = train_example_lm_teacher(Path(args.out), Path(args.corpus), layers=args.layers, d_model=args.d_model,
                                        heads=args.heads, steps=args.steps, seed=args.seed, progress=progress)
    print(f"saved {info['path']}: {info['params']:,} parameters, validation perplexity {info['val_perplexity']:.3f}, "
          f"next-token accuracy {info['val_next_token_accuracy']:.3f}, {info['seconds']:.0f} s; "
          f"text in {info['corpus']}")
    return 0


def _profile(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress profile", description="Measure (or predict) an ONNX model's latency.")
    p.add_argument("onnx", help="ONNX file")
    p.add_argument("--profile", default="host-cpu-1t", help="hardware profile name or file (default host-cpu-1t)")
    p.add_argument("--input-shape", metavar="C,H,W", help="per-sample input shape (default: from the model)")
    p.add_argument("--budget", help="also judge the figure against this latency, e.g. 2ms")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    from .config import coerce
    from .hardware.cli import cmd_profile

    shape = coerce("input_shape", args.input_shape, "command line") if args.input_shape else None
    return cmd_profile(args.onnx, args.profile, shape, budget=args.budget)


def _profiles(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress profiles", description="List the hardware profiles.")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.parse_args(list(argv))
    from .hardware.cli import cmd_profiles

    return cmd_profiles()


def _pick(argv: Sequence[str]) -> int:
    p = _Parser(prog="compress pick",
                description="Print the ONNX file of the most accurate size that meets a budget.")
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument("--budget", help="latency budget with a unit, e.g. 3ms, or a fraction of the teacher's latency, "
                                    "e.g. 0.5x (default: the run's budget)")
    p.add_argument("--profile", help="hardware profile (default: the run's profile)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    from .pick import cmd_pick

    return cmd_pick(args.run_dir, args.budget, args.profile)


_COMMANDS = {"example-teacher": _example_teacher, "example-lm-teacher": _example_lm_teacher, "profile": _profile, "profiles": _profiles, "pick": _pick,
             "report": _report, "search-worker": _search_worker, "run": _run}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    as_json = "--json" in argv
    level = logging.DEBUG if debug else logging.INFO if {"-v", "--verbose"} & set(argv) else \
        logging.ERROR if {"-q", "--quiet"} & set(argv) else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # --debug and -v are about this package's decisions, not matplotlib's font search
    logging.getLogger("compressor").setLevel(level)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")
        for noisy in ("torch", "torch._export", "torch.export", "torch.onnx", "onnxscript", "torch_pruning"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    command = _COMMANDS.get(argv[0]) if argv else None
    rest = argv[1:] if command else argv
    try:
        return (command or _run)(rest)
    except CompressorError as e:
        if debug:
            traceback.print_exc()
        print(f"compress: error: {e}", file=sys.stderr)
        if as_json:  # a script reading stdout learns why there is no summary
            print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    except SystemExit as e:  # argparse: --help is 0, usage errors are 2
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("compress: interrupted; rerun with --resume --out <run folder> to continue", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: still one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            print(f"compress: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug for the "
                  f"traceback)",
                  file=sys.stderr)
        return EXIT_INTERNAL


def _stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler, `kill`, a container stop) stops a run as Ctrl-C does: every file is
    written atomically, so the folder is left resumable, and the exit code is 130."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        signal.signal(signal.SIGTERM, interrupt)


def main_entry() -> None:
    """The `compress` program (and ``python -m compressor``): `main` with SIGTERM as a clean stop."""
    _stop_on_sigterm()
    sys.exit(main())
