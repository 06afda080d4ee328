"""Load a teacher safely and turn it into a prunable module.

Accepted: a TorchScript archive (`torch.jit.save`), a `torch.export` program
(`.pt2`), a state_dict plus `--arch package.module:factory` (loaded with
`weights_only=True`), a model zoo name (``timm:resnet18``,
``torchvision:mobilenet_v3_small``) plus its trained weights (`compressor.intake.zoo`),
and a whole pickled `nn.Module` only with `trust_pickle=True` (unpickling runs
arbitrary code).

Opaque teachers (TorchScript, `.pt2`) have no `nn.Conv2d` for Torch-Pruning to
cut, so they are converted to an ExportedProgram and *lifted*
(`compressor.lift`). The lifted module is checked against the original on real
data; where conversion or lifting fails the teacher is still usable for
distillation (its outputs are all the students need) but not prunable.
"""
from __future__ import annotations

import importlib
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import TeacherLoadError
from ..files import first_line, sha256_file, zip_bomb
from ..types import InputSpec, Teacher
from .lift import lift_exported
from .zoo import build_zoo_model, is_zoo_name

log = logging.getLogger(__name__)
LIFT_ATOL = 1e-4


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # noqa: BLE001 - not a (readable) zip: the other formats are tried
        return []
    if bomb := zip_bomb(path):  # before torch reads (and inflates) any member
        raise TeacherLoadError(f"teacher {path}: {bomb}")
    return names


def detect_format(path: Path) -> str:
    """'torchscript', 'export' or 'pickle' (a torch.save file: state_dict or module)."""
    names = _zip_names(path)
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if path.suffix == ".pt2" or any(n.endswith("archive_format") or "/models/" in n for n in names):
        return "export"
    if names and any(n.endswith("data.pkl") for n in names):
        return "pickle"
    with open(path, "rb") as f:  # a few bytes, not the whole file: a teacher may be gigabytes
        head = f.read(4)
    if head and head[0] == 0x80:  # legacy (non-zip) torch.save pickle protocol marker
        return "pickle"
    if not head:
        raise TeacherLoadError(f"teacher {path} is empty (0 bytes)")
    if head == b"PK\x03\x04":  # starts like a zip, but no readable directory: cut short or damaged
        raise TeacherLoadError(f"teacher {path} is a damaged zip archive (truncated or corrupt); "
                               "save the model again")
    raise TeacherLoadError(
        f"teacher {path} is not a TorchScript archive, a torch.export .pt2 program or a torch.save file"
    )


def _import_factory(ref: str) -> Callable[[], nn.Module]:
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise TeacherLoadError(f"--arch must look like package.module:factory, got {ref!r}")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # an import error in user code is still one line
        raise TeacherLoadError(f"cannot import {mod_name!r} for --arch: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TeacherLoadError(f"--arch: module {mod_name!r} has no attribute {attr!r}") from None


def _load_raw(path: Path, arch: str | None, trust_pickle: bool,
              arch_kwargs: Mapping[str, Any] | None = None) -> tuple[object, str]:
    fmt = detect_format(path)
    try:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu"), fmt
        if fmt == "export":
            return torch.export.load(str(path)), fmt
    except Exception as e:
        kind = {"torchscript": "TorchScript archive", "export": "torch.export program"}[fmt]
        raise TeacherLoadError(f"teacher {path} looks like a {kind} but cannot be loaded: {first_line(e)}") from None
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        if not trust_pickle:  # only reachable if weights_only allowed it; stay conservative
            raise TeacherLoadError(f"teacher {path} is a pickled module; pass --trust-pickle to load it")
        return obj, "pickle"
    state = _unwrap_checkpoint(obj) if isinstance(obj, dict) else None
    if state is None:
        raise TeacherLoadError(f"teacher {path} holds a {type(obj).__name__}, not a model or a state_dict")
    if not arch:
        raise TeacherLoadError(
            f"teacher {path} is a state_dict; pass --arch package.module:factory to build the network"
        )
    try:
        model = _import_factory(arch)(**dict(arch_kwargs or {}))
    except TeacherLoadError:
        raise
    except Exception as e:  # the factory is user code: a bad keyword is still one line
        raise TeacherLoadError(f"--arch {arch}{' with --arch-kwargs' if arch_kwargs else ''} failed: "
                               f"{type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise TeacherLoadError(f"--arch {arch} returned {type(model).__name__}, not an nn.Module")
    _load_weights(model, state, f"state_dict {path} does not fit --arch {arch}")
    return model, "state_dict"


def _torch_load(path: Path, trust_pickle: bool) -> object:
    """A torch.save file, read with weights_only=True unless the user trusts its pickles."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            if not trust_pickle:
                raise TeacherLoadError(
                    f"teacher {path} is a pickled Python object; loading it runs arbitrary code. "
                    "Pass --trust-pickle if you trust its source, or save it with torch.jit.save, "
                    "torch.export.save, or as a state_dict with --arch package.module:factory"
                ) from None
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e2:
                raise TeacherLoadError(f"teacher {path} cannot be unpickled: {first_line(e2)}") from None
        raise TeacherLoadError(f"teacher {path} is corrupt or not a torch file: {first_line(e)}") from None


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherLoadError(f"{what}: {first_line(e)}") from None


def _load_zoo(name: str, weights: Path, sample: torch.Tensor, num_classes: int,
              arch_kwargs: Mapping[str, Any] | None, trust_pickle: bool) -> tuple[nn.Module, str]:
    """``timm:NAME`` / ``torchvision:NAME`` built for the data, with the user's trained weights."""
    in_channels = int(sample.shape[1]) if sample.dim() == 4 else None  # images: timm builds for their channels
    model = build_zoo_model(name, num_classes=num_classes, in_channels=in_channels, kwargs=arch_kwargs)
    obj = _torch_load(weights, trust_pickle)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    state = _unwrap_checkpoint(obj) if isinstance(obj, dict) else None
    if state is None:
        raise TeacherLoadError(f"--weights {weights} holds a {type(obj).__name__}, not a state_dict "
                               "or a checkpoint holding one")
    _load_weights(model, state, f"--weights {weights} do not fit {name}"
                  + (" with --arch-kwargs" if arch_kwargs else " (built for the data's classes and channels)"))
    return model, name.partition(":")[0]


# Where training scripts keep the weights inside a checkpoint dict, plain copies before
# EMA copies (the plain weights are what the reported accuracy was measured on).
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema", "model_ema", "ema")


def _unwrap_checkpoint(obj: dict) -> dict[str, torch.Tensor] | None:
    """The state_dict inside a checkpoint, or None when there is none.

    Accepts a bare state_dict, or a training checkpoint holding one under a usual key
    (with optimizer state, epoch numbers and the like beside it), and drops the
    ``module.`` prefix that DistributedDataParallel / DataParallel leave on every key.
    """
    def is_state(d: object) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in d.items())

    state = obj if is_state(obj) else next((obj[k] for k in _CHECKPOINT_KEYS if is_state(obj.get(k))), None)
    if state is None:
        return None
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state




def _export(raw: object, fmt: str, example: torch.Tensor) -> torch.export.ExportedProgram:
    if fmt == "export":
        return raw  # type: ignore[return-value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            from torch._export.converter import TS2EPConverter

            return TS2EPConverter(raw, (example,)).convert()
        batch = torch.export.Dim("batch", min=1)
        return torch.export.export(raw, (example,), dynamic_shapes=({0: batch},), strict=False)


class InferenceOnly(nn.Module):
    """Wraps a module that refuses train()/eval() (an unlifted exported program):
    it is an inference graph already, so mode switches are no-ops."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def train(self, mode: bool = True) -> "InferenceOnly":
        self.training = mode
        return self


def _callable(raw: object, fmt: str) -> nn.Module:
    if fmt == "export":
        return InferenceOnly(raw.module())  # type: ignore[union-attr]
    return raw  # type: ignore[return-value]


def load_teacher(path: str | Path, sample: torch.Tensor, num_classes: int, *, arch: str | None = None,
                 arch_kwargs: Mapping[str, Any] | None = None,
                 trust_pickle: bool = False, input_shape: tuple[int, ...] | None = None,
                 weights: str | Path | None = None) -> Teacher:
    """Load, check against the data, and lift. `sample` is a real data batch (>= 2 samples).

    `path` is a file, or a zoo name (``timm:resnet18``) whose trained weights are in `weights`.
    """
    zoo = is_zoo_name(str(path))
    if zoo and weights is None:
        raise TeacherLoadError(f"teacher {path} needs --weights: a checkpoint of its trained weights "
                               "(the zoo's own pretrained weights score other classes)")
    if not zoo and weights is not None:
        raise TeacherLoadError("--weights goes with a zoo teacher (--teacher timm:NAME or torchvision:NAME); "
                               "a state_dict file is itself the --teacher, with --arch")
    name, path = str(path), Path(weights if zoo else path)  # type: ignore[arg-type]
    what = "--weights" if zoo else "teacher"
    try:
        if not path.exists():
            raise TeacherLoadError(f"{what} {path} does not exist")
        if not path.is_file():
            raise TeacherLoadError(f"{what} {path} is not a file")
    except OSError as e:  # a name too long for the filesystem, a loop of links, ...
        raise TeacherLoadError(f"{what} {path} cannot be opened: {e.strerror or e}") from None
    if zoo:
        raw, fmt = _load_zoo(name, path, sample, num_classes, arch_kwargs, trust_pickle)
    else:
        raw, fmt = _load_raw(path, arch, trust_pickle, arch_kwargs)
    shape = tuple(input_shape) if input_shape else tuple(sample.shape[1:])
    if tuple(sample.shape[1:]) != shape:
        raise TeacherLoadError(f"--input-shape {shape} does not match the data's sample shape {tuple(sample.shape[1:])}")
    module = _callable(raw, fmt)
    if isinstance(module, nn.Module):
        module.eval()
    expected = _expected_input(raw, fmt)
    with torch.no_grad():
        try:
            out = module(sample)
        except Exception as e:
            want = f" (the teacher was exported for input {expected})" if expected else ""
            raise TeacherLoadError(
                f"teacher does not accept the data: data samples have shape {shape}{want}: {first_line(e)}"
            ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TeacherLoadError(
            f"teacher output {got} does not fit the data: expected (batch, {num_classes}) class scores "
            f"for input of shape {shape}"
        )
    if out.shape[1] != num_classes:
        raise TeacherLoadError(
            f"teacher output {tuple(out.shape)} does not fit the data: expected (batch, {num_classes}) class "
            f"scores (the data's labels run 0..{num_classes - 1}) but the teacher scores {out.shape[1]} classes"
        )
    if not torch.isfinite(out).all():  # NaN weights, or an overflow: nothing can be distilled from it
        raise TeacherLoadError(f"teacher {path} outputs NaN or infinite class scores on the data "
                               f"(are its weights NaN?)")
    spec = InputSpec(shape=shape, num_classes=num_classes)
    lifted, prunable = _lift(raw, fmt, module, sample)
    return Teacher(module=lifted, spec=spec, source=name if zoo else str(path), format=fmt, sha256=sha256_file(path),
                   prunable=prunable)


def _expected_input(raw: object, fmt: str) -> tuple[int, ...] | None:
    if fmt != "export":
        return None
    for node in raw.graph.nodes:  # type: ignore[union-attr]
        if node.op == "placeholder" and node.name in getattr(raw.graph_signature, "user_inputs", ()):
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                return tuple(int(s) if str(s).isdigit() else "batch" for s in val.shape)  # type: ignore[misc]
    return None


def _lift(raw: object, fmt: str, module: nn.Module, sample: torch.Tensor) -> tuple[nn.Module, bool]:
    """Lifted graph if it reproduces the teacher on `sample`; else the original, unprunable."""
    example = sample[:4] if len(sample) >= 2 else sample.repeat(2, *[1] * (sample.dim() - 1))
    try:
        ep = _export(raw, fmt, example)
        gm = ep.module()
        lifted, unlifted = lift_exported(gm)
        with torch.no_grad():
            ref = module(sample)
            got = lifted(sample)
        diff = float((ref - got).abs().max())
        if diff > LIFT_ATOL:
            log.warning("lifted teacher differs from the original by %.2e; pruning disabled", diff)
            return module, False
        if unlifted:
            log.info("%d ops with weights were not lifted; their channels are not pruned", unlifted)
        return lifted, True
    except Exception as e:  # any failure here only costs the teacher-derived space
        log.warning("teacher cannot be lifted into prunable layers (%s); using family students only",
                    first_line(e))
        return module, False
