"""The one place `transformers` is imported (an optional extra: ``pip install 'compressor[lm]'``).

transformers imports torchvision lazily (image processors); PyPI's torchvision is built
against CUDA torch and its import fails beside the CPU build unless the zoo's shim runs
first, so the shim imports torchvision before transformers ever does.
"""
from __future__ import annotations

from types import ModuleType

from ..errors import TeacherLoadError
from ..files import first_line

_LOADED: ModuleType | None = None


def transformers() -> ModuleType:
    """The transformers module, imported once, with torchvision shimmed where it is installed."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    try:
        import importlib.util

        if importlib.util.find_spec("torchvision") is not None:
            from ..intake.zoo import import_zoo

            try:
                import_zoo("torchvision")
            except TeacherLoadError:
                pass  # transformers runs without torchvision for text models
        import transformers as tf
    except ModuleNotFoundError as e:
        raise TeacherLoadError(f"language-model teachers need the {e.name} package, which is not installed: "
                               "pip install 'compressor[lm]'") from None
    except Exception as e:  # noqa: BLE001 - a broken install is still one line
        raise TeacherLoadError(f"transformers cannot be imported: {type(e).__name__}: {first_line(e)}") from None
    tf.logging.set_verbosity_error()  # its warnings are about its own defaults, not the user's run
    _LOADED = tf
    return tf
