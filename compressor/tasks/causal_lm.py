"""Causal language modelling: token ids in, next-token logits out, for a GPT-2-family teacher.

The teacher is a Hugging Face model folder (`save_pretrained`: config.json, weights, and the
tokenizer's files); `--data` is a text file or a folder of text files, tokenised with the
teacher's own tokenizer. Sizes nest the MatTA way (`lm.gpt`), train in one run (`lm.train`),
and are scored on validation perplexity, next-token accuracy (the headline: higher is better,
as `pick` ranks) and last-word accuracy on held-out passages (`lm.metrics`).
"""
from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import DataError, TeacherLoadError
from ..files import first_line
from .base import Metric, Task

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import CompressConfig
    from ..lm.corpus import TextCorpus
    from ..pipeline import RunResult
    from ..ranks import Ranks

__all__ = ["CausalLM", "LMData", "LMTeacher", "load_lm_teacher"]

CONTEXT = 128  # tokens per timed forward and per training/validation window
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LMTeacher:
    model: nn.Module  # GPT2LMHeadModel, eval mode
    tokenizer: Any
    source: str
    sha256: str  # of config.json and the weights file, in that order
    context: int  # tokens per window: the model's positions, at most CONTEXT


@dataclass(frozen=True)
class LMData:
    corpus: "TextCorpus"
    context: int
    val_windows: torch.Tensor  # (N, context + 1)


_MARKERS = ("config.json", "tokenizer_config.json", "generation_config.json", *_WEIGHTS)


def is_model_folder(path: str) -> bool:
    """A folder `save_pretrained` wrote (any of its files): then a missing one is named in one line."""
    p = Path(path)
    try:
        return p.is_dir() and any((p / m).is_file() for m in _MARKERS)
    except OSError:  # a name the file system refuses (too long, ...): the teacher loader names it in one line
        return False


def load_lm_teacher(path: str) -> LMTeacher:
    """A GPT-2-family model folder: config, weights and tokenizer, each checked in one line."""
    from ..lm.hf import transformers

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise TeacherLoadError(f"teacher {path}: no config.json; save the model with model.save_pretrained({path!r})")
    weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise TeacherLoadError(f"teacher {path}: no weights ({' or '.join(_WEIGHTS)}); save the model with "
                               "save_pretrained")
    tf = transformers()
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged config is the user's to fix, in one line
        raise TeacherLoadError(f"teacher {path}: config.json cannot be read: {first_line(e)}") from None
    if config.model_type != "gpt2":
        raise TeacherLoadError(f"teacher {path} is a {config.model_type!r} model; language-model compression "
                               "handles the GPT-2 family (GPT2LMHeadModel)")
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing or damaged tokenizer files: one line
        raise TeacherLoadError(f"teacher {path}: no usable tokenizer in the folder ({first_line(e)}); save it "
                               f"beside the model with tokenizer.save_pretrained({path!r})") from None
    if len(tokenizer) > config.vocab_size:
        raise TeacherLoadError(f"teacher {path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                               f"{config.vocab_size}; they do not belong together")
    try:
        model = tf.GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        raise TeacherLoadError(f"teacher {path}: weights cannot be loaded: {first_line(e)}") from None
    digest = hashlib.sha256()
    for f in (folder / "config.json", weights):
        digest.update(f.read_bytes())
    return LMTeacher(model=model.eval(), tokenizer=tokenizer, source=str(path), sha256=digest.hexdigest(),
                     context=min(CONTEXT, int(config.n_positions)))


class CausalLM(Task):
    name = "causal-lm"
    metrics = (
        Metric("next_token_accuracy", "Next-token accuracy",
               description="share of validation tokens whose argmax prediction is the next token"),
        Metric("perplexity", "Perplexity", higher_is_better=False, percent=False,
               description="exp(mean next-token cross-entropy) over every validation token, per token"),
        Metric("last_word_accuracy", "Last-word accuracy",
               description="held-out passages whose last word greedy decoding reproduces exactly (LAMBADA-style)"),
    )
    headline = "next_token_accuracy"
    distillation_target = "next-token logits at every position (token-level KL), from the teacher and the TA"

    def claims(self, cfg: "CompressConfig") -> bool:
        return is_model_folder(cfg.teacher)

    def read_text(self, cfg: "CompressConfig") -> tuple[str, list[str]]:
        """The documents of `--data`, read before the teacher is loaded: wrong data fails fast."""
        from ..lm.corpus import read_documents

        if cfg.data in ("digits", "mnist1d"):
            raise DataError(f"teacher {cfg.teacher} is a language model but --data is {cfg.data!r} (images); pass "
                            "a text file or a folder of text files, e.g. --data corpus.txt")
        return read_documents(cfg.data)

    def load_data(self, cfg: "CompressConfig", teacher: LMTeacher | None = None,
                  text: tuple[str, list[str]] | None = None) -> LMData:
        from ..lm.corpus import split_corpus, windows

        if teacher is None:
            raise ValueError("a language model's data is tokenised by its teacher's tokenizer")
        name, docs = text or self.read_text(cfg)
        corpus = split_corpus(name, docs, teacher.tokenizer, min_tokens=teacher.context + 2)
        try:
            val = windows(corpus.val, teacher.context, limit=256)
        except DataError:
            raise DataError(f"data {cfg.data!r}: the validation text ({len(corpus.val)} tokens) is shorter than one "
                            f"window of {teacher.context + 1} tokens; give more text") from None
        return LMData(corpus=corpus, context=teacher.context, val_windows=val)

    def example_inputs(self, data: LMData, n: int) -> torch.Tensor:
        return data.val_windows[:n, :-1]

    def timing_shape(self, data: LMData) -> tuple[int, ...]:
        return (data.context,)  # one forward over a full window, as a prompt is read

    def distillation_loss(self, student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
        from ..lm.train import token_kl

        return token_kl(student, target, temperature)

    def serving(self, data: LMData, tokenizer: Any = None) -> dict[str, Any]:
        """The tokenizer a server must apply (its files sit beside each size's ONNX file) and
        the input's shape: no normalisation, no special tokens, at most `context` tokens."""
        tok = type(tokenizer).__name__ if tokenizer is not None else None
        return {"preprocess": {"input": {"kind": "text", "description": "UTF-8 text"},
                               "steps": [{"op": "tokenize", "tokenizer": tok, "files": "tokenizer/",
                                          "add_special_tokens": False},
                                         {"op": "truncate", "max_tokens": data.context, "keep": "last"}]},
                "input_name": "input_ids", "output": "logits (batch, sequence, vocab): next-token logits",
                "classes": []}

    def compress(self, cfg: "CompressConfig", console: "Console", held: ExitStack,
                 ranks: "Ranks | None" = None) -> "RunResult":
        from ..lm.compress import run_causal_lm

        return run_causal_lm(self, cfg, console, held, ranks)
