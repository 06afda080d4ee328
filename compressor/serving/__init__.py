"""What a server needs beside each size's ONNX file, usable without this package.

Each size folder gets `preprocess.json` (how a raw sample becomes the model's input:
the run's own data pipeline, written as steps), `classes.json` (class index -> name)
and `serve.py`, a script that needs only onnxruntime and numpy (and Pillow for image
files). `serve.py` is a copy of `serve_template.py`, which the test suite runs in a
fresh virtual environment without torch.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import write_json, write_text

PREPROCESS_NAME = "preprocess.json"
CLASSES_NAME = "classes.json"
SERVE_NAME = "serve.py"

__all__ = ["CLASSES_NAME", "PREPROCESS_NAME", "SERVE_NAME", "serve_script", "write_serving_files"]


def serve_script() -> str:
    return resources.files(__package__).joinpath("serve_template.py").read_text()


def write_serving_files(folder: Path, preprocess: Mapping[str, Any], class_names: Sequence[str],
                        num_classes: int) -> dict[str, Path]:
    """Write the three files into `folder`; returns {role: path}."""
    names = list(class_names) or [str(i) for i in range(num_classes)]
    return {"preprocess": write_json(folder / PREPROCESS_NAME, dict(preprocess)),
            "classes": write_json(folder / CLASSES_NAME, names),
            "serve": write_text(folder / SERVE_NAME, serve_script())}
