"""Text for causal language modelling: read, tokenise, split, cut into windows.

`--data` is a text file or a folder of text files (``*.txt``, ``*.md``, ``*.rst``, read in
name order). The split is by document, never inside one: the last 10 % of the documents
(at least one) is held out for validation, so validation passages were never trained on.
Held-out passages for the last-word test (LAMBADA-style) are cut from the validation text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DataError

__all__ = ["TEXT_SUFFIXES", "Passage", "TextCorpus", "last_word_passages", "python_docs", "read_documents",
           "tokenise", "windows"]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
_WORD_END = re.compile(r"(?s)^(.*\S)\s+([A-Za-z][A-Za-z'-]*[A-Za-z])[.!?,;:]?\s*$")


@dataclass(frozen=True)
class Passage:
    """A held-out passage for the last-word test: its text up to the last word, and that word."""

    context: str
    word: str


@dataclass(frozen=True)
class TextCorpus:
    """Token ids of the training and validation text, and the last-word passages."""

    name: str
    train: torch.Tensor  # 1-D int64 token ids
    val: torch.Tensor
    passages: tuple[Passage, ...]
    documents: int


def python_docs() -> list[str]:
    """The Python documentation's topic texts (`pydoc_data.topics`, shipped with CPython): real
    English prose about the language, about 460 kB, available offline wherever Python is."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_documents(spec: str) -> tuple[str, list[str]]:
    """(name, documents) of a text file (one document per blank-line-separated block) or a folder."""
    path = Path(spec)
    try:
        found, is_dir = path.exists(), path.is_dir()
    except OSError as e:
        raise DataError(f"data {spec!r} cannot be opened: {e.strerror or e}") from None
    if not found:
        raise DataError(f"data {spec!r} not found: a language model needs a text file or a folder of text files")
    if is_dir:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data folder {spec!r} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        docs = [_read(p) for p in files]
    else:
        if path.suffix.lower() in (".npz", ".npy", ".png", ".jpg", ".jpeg"):
            raise DataError(f"data {spec!r} is not text: a language-model teacher needs a text file or a folder "
                            "of text files")
        docs = [d for d in re.split(r"\n\s*\n", _read(path))]
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"data {spec!r} holds no text")
    return path.name, docs


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e.strerror or e}") from None


def tokenise(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of `text` with the teacher's own tokenizer (no special tokens: the text runs on)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def last_word_passages(documents: Sequence[str], n: int, chars: int = 400) -> tuple[Passage, ...]:
    """Up to `n` passages from `documents`, each ending at a sentence or line whose last word has
    at least 4 letters (short words are mostly guessable function words), LAMBADA's set-up: the
    model sees the passage and must produce the final word."""
    out: list[Passage] = []
    for doc in documents:
        for end in re.finditer(r"[.!?]\s", doc):
            text = doc[max(0, end.start() + 1 - chars):end.start() + 1]
            m = _WORD_END.match(text)
            if m and len(m.group(2)) >= 4 and len(m.group(1)) >= 64:
                out.append(Passage(context=m.group(1) + " ", word=m.group(2)))
                if len(out) >= n:
                    return tuple(out)
                break  # one passage per document keeps the set varied
    return tuple(out)


def split_corpus(name: str, documents: list[str], tokenizer: Any, *, val_fraction: float = 0.1,
                 passages: int = 64, min_tokens: int = 0) -> TextCorpus:
    """Documents in order, the last `val_fraction` (at least one) held out; both sides tokenised."""
    if len(documents) < 2:
        # one document: split it by characters, at a line break, so both sides exist
        text = documents[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
        documents = [text[:cut], text[cut:]]
    n_val = max(1, round(len(documents) * val_fraction))
    train_docs, val_docs = documents[:-n_val], documents[-n_val:]
    sep = "\n\n"
    train, val = tokenise(tokenizer, sep.join(train_docs)), tokenise(tokenizer, sep.join(val_docs))
    if len(train) < max(min_tokens, 2) or len(val) < 2:
        raise DataError(f"data {name!r} is too short: {len(train)} training and {len(val)} validation tokens "
                        f"(a language model needs at least {max(min_tokens, 2)} training tokens)")
    return TextCorpus(name=name, train=train, val=val, passages=last_word_passages(val_docs, passages),
                      documents=len(documents))


def windows(ids: torch.Tensor, length: int, *, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows (N, length + 1) of `ids`: inputs are [:, :-1], next tokens [:, 1:]."""
    n = (len(ids) - 1) // length
    if n < 1:
        raise DataError(f"text of {len(ids)} tokens is shorter than one window of {length + 1}")
    n = min(n, limit) if limit else n
    return torch.stack([ids[i * length:(i + 1) * length + 1] for i in range(n)])


def random_windows(ids: torch.Tensor, length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` windows (batch, length + 1) at random offsets: every step sees new text."""
    starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=generator)
    return torch.stack([ids[s:s + length + 1] for s in starts.tolist()])
