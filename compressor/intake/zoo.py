"""Teachers named by their model zoo: ``timm:resnet18``, ``torchvision:mobilenet_v3_small``.

The zoo builds the architecture (sized to the data: its class count and, for timm,
its input channels) and ``--weights`` holds the trained weights: a state_dict or a
training checkpoint, read with ``weights_only=True`` like every other state_dict.
Nothing is downloaded: a zoo's pretrained weights score its own classes, not the
user's, so the user's checkpoint is required.

timm and torchvision are optional extras, imported only when a teacher names
them. PyPI's torchvision wheels are built against the CUDA build of torch; beside
the CPU build their compiled operators (``torchvision::nms`` and friends) do not
load, and ``import torchvision`` then fails while registering fake kernels for
those operators. `_skip_missing_torchvision_ops` lets the import through: only the
detection operators stay unusable, and classification models never call them.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import re
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ..errors import TeacherLoadError
from ..files import first_line

ZOOS = ("timm", "torchvision")
_NAME = re.compile(r"^(timm|torchvision):([A-Za-z0-9_.\-]+)$")


def is_zoo_name(teacher: str) -> bool:
    """True for ``timm:NAME`` / ``torchvision:NAME`` (not a file path)."""
    return any(str(teacher).startswith(f"{z}:") for z in ZOOS)


def parse_zoo_name(teacher: str) -> tuple[str, str]:
    m = _NAME.match(str(teacher))
    if not m:
        raise TeacherLoadError(f"teacher {teacher!r}: a zoo teacher looks like timm:resnet18 or "
                               "torchvision:mobilenet_v3_small")
    return m.group(1), m.group(2)


def _op_exists(qualname: str) -> bool:
    ns, _, rest = qualname.partition("::")
    name, _, overload = rest.partition(".")
    try:
        packet = getattr(getattr(torch.ops, ns), name)
        if overload:
            getattr(packet, overload)
        return True
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def _skip_missing_torchvision_ops() -> Iterator[None]:
    """While torchvision imports, registrations for its operators that this torch lacks are skipped."""
    patched: dict[str, Callable[..., Any]] = {}

    def skipping(original: Callable[..., Any]) -> Callable[..., Any]:
        def register(op: Any, *args: Any, **kwargs: Any) -> Any:
            qualname = op if isinstance(op, str) else ""
            if qualname.startswith("torchvision::") and not _op_exists(qualname):
                # the operator's compiled kernel is missing: nothing to attach a fake/autograd rule to
                return (lambda fn: fn) if not args and "func" not in kwargs else None
            return original(op, *args, **kwargs)
        return register

    for attr in ("register_fake", "register_autograd", "impl_abstract"):
        if hasattr(torch.library, attr):
            patched[attr] = getattr(torch.library, attr)
            setattr(torch.library, attr, skipping(patched[attr]))
    try:
        yield
    finally:
        for attr, original in patched.items():
            setattr(torch.library, attr, original)


def import_zoo(zoo: str) -> ModuleType:
    """timm or torchvision, with the torchvision shim applied (timm imports torchvision too)."""
    try:
        with _skip_missing_torchvision_ops():
            if zoo == "timm":
                importlib.import_module("torchvision")  # timm's own import pulls it in; shim it first
            return importlib.import_module(zoo)
    except ModuleNotFoundError as e:
        raise TeacherLoadError(f"{zoo}: teachers are built by the {e.name} package, which is not installed: "
                               "pip install 'compressor[models]'") from None
    except Exception as e:  # a broken install is still one line
        raise TeacherLoadError(f"{zoo} cannot be imported: {type(e).__name__}: {first_line(e)}") from None


def _close(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def build_zoo_model(teacher: str, *, num_classes: int, in_channels: int | None,
                    kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The untrained architecture, sized to the data unless ``kwargs`` say otherwise."""
    zoo, name = parse_zoo_name(teacher)
    lib = import_zoo(zoo)
    options = {"num_classes": num_classes, **dict(kwargs or {})}
    try:
        if zoo == "timm":
            if not lib.is_model(name):
                raise TeacherLoadError(f"timm has no model {name!r}{_close(name, lib.list_models())}")
            if in_channels is not None:
                options.setdefault("in_chans", in_channels)
            return lib.create_model(name, pretrained=False, **options)
        models = lib.models
        classifiers = models.list_models(module=models)  # classification only, not detection or segmentation
        if name not in classifiers:
            raise TeacherLoadError(f"torchvision has no classification model {name!r}"
                                   f"{_close(name, classifiers)}")
        builder = models.get_model_builder(name)
        if "weights" in inspect.signature(builder).parameters:
            options.setdefault("weights", None)  # nothing downloaded: --weights holds the trained weights
        return builder(**options)
    except TeacherLoadError:
        raise
    except Exception as e:  # a bad keyword or size is the user's to fix, in one line
        raise TeacherLoadError(f"{teacher} cannot be built with {options}: {type(e).__name__}: "
                               f"{first_line(e)}") from None
