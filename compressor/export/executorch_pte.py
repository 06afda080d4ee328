"""An ExecuTorch program (`model.pte`) with the XNNPACK delegate, lowered, run and timed in a child process.

This process only traces the size (`torch.export`, at a fixed batch) and saves the
program; ``python -m compressor.export.executorch_pte`` then lowers it
(`to_edge_transform_and_lower` with `XnnpackPartitioner`, `.to_executorch()`),
writes the `.pte`, loads it back with `executorch.runtime`, runs the reference
inputs and times it, and prints one JSON line. Why a child: ExecuTorch's import
takes seconds, pulls in torchao (which registers global state in torch) and loads a
native runtime linked against this torch's libraries; a version mismatch there, or
a crash in native code, must cost this format only, never the run, and must be
reported with the versions involved.

Fixed batch: the program is traced at the timing profile's batch (1 on the host
profiles), as edge deployments plan a static memory arena; inputs of other sizes run
in chunks of that batch. (A bounded dynamic batch lowered here but failed to resize
its input at run time with ExecuTorch 1.5.1.)
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..files import first_line, write_bytes
from ..types import HardwareProfile, LatencyReport, to_jsonable
from .formats import DEFAULT_ATOL, FormatExport, judge
from .onnx_export import Reference, _eval_mode

__all__ = ["executorch_unavailable_reason", "export_executorch", "trace_fixed_batch"]

_TIMEOUT_S = 900  # import + lowering take ~20 s for a small CNN on two shared cores


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def executorch_unavailable_reason() -> str | None:
    """Why ExecuTorch cannot be tried here, without importing it (the child finds any deeper reason)."""
    if importlib.util.find_spec("executorch") is None:
        return "ExecuTorch is not installed (pip install executorch)"
    return None


def trace_fixed_batch(module: nn.Module, x: torch.Tensor, batch: int) -> torch.export.ExportedProgram:
    """`torch.export` of `module` at exactly `batch` samples (cut from `x`, repeated if short)."""
    sample = x[:batch] if len(x) >= batch else x[:1].repeat(batch, *([1] * (x.dim() - 1)))
    with _eval_mode(module), torch.no_grad():
        return torch.export.export(module, (sample.contiguous(),))


def export_executorch(*, onnx_path: Path, module: nn.Module, reference: Reference, profile: HardwareProfile,
                      input_shape: Sequence[int], atol: float = DEFAULT_ATOL) -> FormatExport:
    """`model.pte` beside `onnx_path`: lowered to XNNPACK, loaded back by the ExecuTorch runtime,
    judged against PyTorch and timed under `profile`'s settings, all in a child process."""
    reason = executorch_unavailable_reason()
    if reason:
        return FormatExport("executorch", reason=reason)
    pte = Path(onnx_path).with_suffix(".pte")
    with tempfile.TemporaryDirectory(prefix="compressor-pte-") as tmp_name:
        tmp = Path(tmp_name)
        torch.export.save(trace_fixed_batch(module, reference["batch"][0], profile.batch_size), tmp / "program.pt2")
        inputs = {}
        for label, (x, _) in reference.items():
            inputs[label] = str(tmp / f"input-{label}.npy")
            np.save(inputs[label], x.numpy())
        request = {"program": str(tmp / "program.pt2"), "pte": str(tmp / "model.pte"), "inputs": inputs,
                   "outputs": str(tmp), "batch": profile.batch_size, "input_shape": list(input_shape),
                   "profile": _profile_fields(profile)}
        answer = _run_child(request)
        written = (tmp / "model.pte").is_file()
        files = {"executorch": write_bytes(pte, (tmp / "model.pte").read_bytes())} if written else {}
        runtime = answer.get("runtime", f"ExecuTorch {_version('executorch')}")
        notes = tuple(answer.get("notes", ()))
        if "error" in answer:
            return FormatExport("executorch", files, runtime, reason=answer["error"], notes=notes)
        outputs = {label: [np.load(p) for p in paths] for label, paths in answer["outputs"].items()}
    parity = judge(reference, outputs, atol)
    latency = LatencyReport.from_dict(answer["latency"]) if answer.get("latency") else None
    reason = "; ".join(r for r in (parity.describe(), answer.get("latency_error", "")) if r)
    return FormatExport("executorch", files, runtime, parity=parity, latency=latency, reason=reason, notes=notes)


def _profile_fields(profile: HardwareProfile) -> dict[str, Any]:
    fields = to_jsonable(profile)
    fields.pop("device", None)  # timing settings only: the child never predicts
    return fields


def _run_child(request: dict[str, Any]) -> dict[str, Any]:
    """The child's JSON answer, or an answer holding why there is none (crash, timeout, no output)."""
    versions = f"torch {torch.__version__}, executorch {_version('executorch')}"
    try:
        done = subprocess.run([sys.executable, "-m", "compressor.export.executorch_pte"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"ExecuTorch did not finish within {_TIMEOUT_S} s ({versions})"}
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    # native stderr holds the runtime's own log lines; its last one is what went wrong
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1].strip()
    if done.returncode < 0:
        how = f"died of {signal.Signals(-done.returncode).name}"
    else:
        how = f"exited with status {done.returncode}"
    return {"error": f"the ExecuTorch process {how} ({versions}): {tail}"}


# --------------------------------------------------------------------------- the child


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Lower, write, load back, run the reference inputs and time; each failure named by its step."""
    import logging
    import warnings

    from ..hardware.backends import usable_cores

    versions = f"torch {torch.__version__}, executorch {_version('executorch')}"
    warnings.simplefilter("ignore")
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it warns about CUDA kernels a CPU build lacks
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    except Exception as e:  # noqa: BLE001 - an ABI or version mismatch shows up here in many types
        return {"error": f"ExecuTorch cannot be imported beside {versions}: {type(e).__name__}: {first_line(e)}"}
    runtime = f"ExecuTorch {_version('executorch')} (XNNPACK delegate)"
    pte = Path(request["pte"])
    try:
        program = torch.export.load(request["program"])
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        delegates = [d.id for plan in lowered.executorch_program.execution_plan for d in plan.delegates]
        pte.write_bytes(lowered.buffer)
    except Exception as e:  # noqa: BLE001
        return {"runtime": runtime, "error": f"lowering to XNNPACK failed ({versions}): "
                                             f"{type(e).__name__}: {first_line(e)}"}
    notes = [f"{len(delegates)} XNNPACK partition(s)" if delegates else
             "no operator was delegated to XNNPACK: the program runs on ExecuTorch's portable kernels"]
    profile = HardwareProfile(**request["profile"])
    threads = _set_threads(profile.threads or usable_cores(), notes)  # before loading: see _set_threads
    try:
        method = Runtime.get().load_program(pte).load_method("forward")
    except Exception as e:  # noqa: BLE001
        return {"runtime": runtime, "notes": notes, "error": f"written, but the ExecuTorch runtime cannot load it "
                                                             f"({versions}): {type(e).__name__}: {first_line(e)}"}
    batch = int(request["batch"])
    try:
        outputs = {}
        for label, path in request["inputs"].items():
            got = _run_chunked(method, np.load(path), batch)
            outputs[label] = [str(Path(request["outputs"]) / f"output-{label}-{i}.npy") for i in range(len(got))]
            for file, array in zip(outputs[label], got):
                np.save(file, array)
    except Exception as e:  # noqa: BLE001
        return {"runtime": runtime, "notes": notes, "error": f"loaded, but running it failed: "
                                                             f"{type(e).__name__}: {first_line(e)}"}
    answer: dict[str, Any] = {"runtime": runtime, "notes": notes, "outputs": outputs}
    try:
        dtype = np.load(request["inputs"]["batch"]).dtype
        answer["latency"] = to_jsonable(_time(method, profile, request["input_shape"], dtype, threads))
    except Exception as e:  # noqa: BLE001 - a file without a figure is still a usable file
        answer["latency_error"] = f"not timed: {type(e).__name__}: {first_line(e)}"
    return answer


def _run_chunked(method: Any, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Outputs of a fixed-batch program on any number of samples: chunks of `batch`, the last padded."""
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs = method.execute([torch.from_numpy(np.ascontiguousarray(chunk))])
        parts.append([o.detach().numpy()[:n] for o in outs])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _set_threads(threads: int, notes: list[str]) -> int | None:
    """Size ExecuTorch's thread pool (XNNPACK runs on it; it starts with one thread per core), so the
    figure is taken with the profile's threads and stands beside ONNX's. The setter is private and
    "unsafe": resetting the pool under a loaded XNNPACK program crashed the process (SIGSEGV,
    ExecuTorch 1.5.1), so it is called before any program is loaded."""
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        return int(portable_lib._threadpool_get_thread_count())
    except Exception as e:  # noqa: BLE001
        notes.append(f"XNNPACK thread count not set ({type(e).__name__}: {first_line(e)}): it uses its default")
        return None


def _time(method: Any, profile: HardwareProfile, input_shape: Sequence[int], dtype: np.dtype,
          threads: int | None) -> LatencyReport:
    """Time one fixed-batch run with the shared timing loop."""
    from ..hardware.backends import cpu_model, usable_cores
    from ..hardware.timing import measure_timed_run

    shape = (profile.batch_size, *input_shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) \
        else rng.integers(0, 2, size=shape).astype(dtype)
    inputs, execute, clock = [torch.from_numpy(x)], method.execute, time.perf_counter

    def timed_run() -> float:
        t0 = clock()
        execute(inputs)
        return clock() - t0

    env = {"backend": "executorch-xnnpack", "executorch_version": _version("executorch"), "threads": threads,
           "cpu_model": cpu_model(), "usable_cores": usable_cores(), "batch_size": profile.batch_size,
           "precision": profile.precision, "input_shape": list(input_shape)}
    return measure_timed_run(timed_run, profile, env)


def main() -> int:
    answer = _child(json.loads(sys.stdin.read()))
    sys.stdout.write("\n" + json.dumps(answer, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
