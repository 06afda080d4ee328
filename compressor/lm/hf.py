"""The one place `transformers` is imported (an optional extra: ``pip install 'compressor[lm]'``).

transformers imports torchvision lazily (image processors); PyPI's torchvision is built
against CUDA torch and its import fails beside the CPU build unless the zoo's shim runs
first, so the shim imports torchvision before transformers ever does.
"""
from __future__ import annotations

import contextlib
import logging
from types import ModuleType
from typing import Iterator

from ..errors import TeacherLoadError
from ..files import first_line

_LOADED: ModuleType | None = None


def transformers() -> ModuleType:
    """The transformers module, imported once, with torchvision shimmed where it is installed."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    with _quiet_imports():
        tf = _import()
    tf.logging.set_verbosity_error()  # its warnings are about its own defaults, not the user's run
    _LOADED = tf
    return tf


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    """transformers pulls in torchao where it is installed, which logs a warning per compiled kernel this
    CPU build lacks and per enum it registers with torch's pytree: noise on every run, none of it ours."""
    names = ("torchao", "torch.utils._pytree")
    before = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


def _import() -> ModuleType:
    try:
        import importlib.util

        if importlib.util.find_spec("torchvision") is not None:
            from ..intake.zoo import import_zoo

            try:
                import_zoo("torchvision")
            except TeacherLoadError:
                pass  # transformers runs without torchvision for text models
        import transformers as tf

        # transformers imports lazily: resolve what the runs use now, while the import is kept quiet
        _ = (tf.GPT2LMHeadModel, tf.AutoTokenizer, tf.AutoConfig)
    except ModuleNotFoundError as e:
        raise TeacherLoadError(f"language-model teachers need the {e.name} package, which is not installed: "
                               "pip install 'compressor[lm]'") from None
    except Exception as e:  # noqa: BLE001 - a broken install is still one line
        raise TeacherLoadError(f"transformers cannot be imported: {type(e).__name__}: {first_line(e)}") from None
    return tf
