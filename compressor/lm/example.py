"""The built-in example language model: a small GPT-2 trained on the Python documentation.

The text is CPython's own `pydoc_data.topics` (the documentation's topic pages, about
460 kB of English prose and code, shipped with every Python), written out as one text
file so `compress --data` reads exactly what the teacher was trained on. Tokens are UTF-8
bytes (transformers' `ByT5Tokenizer` without extra ids: 3 special tokens + 256 bytes), so no
vocabulary has to be downloaded or trained. The model is saved with `save_pretrained`
beside its tokenizer: a Hugging Face model folder like any other.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import OutputError
from .corpus import python_docs, random_windows, read_documents, split_corpus, windows
from .hf import transformers
from .metrics import token_scores

__all__ = ["byte_tokenizer", "train_example_lm_teacher", "write_python_docs"]


def byte_tokenizer() -> Any:
    """A byte-level tokenizer that needs no files: ids 0-2 special, 3-258 the UTF-8 bytes."""
    return transformers().ByT5Tokenizer(extra_ids=0)


def write_python_docs(path: Path) -> Path:
    """The Python documentation's topics as one text file, one topic per blank-line block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(python_docs()) + "\n", encoding="utf-8")
    return path


def train_example_lm_teacher(out: Path, corpus: Path, *, layers: int = 4, d_model: int = 128, heads: int = 4,
                             context: int = 128, steps: int = 2000, batch_size: int = 16, lr: float = 2e-3,
                             seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """Train a GPT-2 (`layers` x `d_model`, `heads` heads, FFN 4x) from scratch on the corpus
    and save it to the folder `out` with its tokenizer. Returns its figures."""
    tf = transformers()
    start = time.perf_counter()
    if not corpus.exists():
        write_python_docs(corpus)
    tok = byte_tokenizer()
    name, docs = read_documents(str(corpus))
    data = split_corpus(name, docs, tok)
    torch.manual_seed(seed)
    config = tf.GPT2Config(vocab_size=len(tok), n_positions=context, n_embd=d_model, n_layer=layers, n_head=heads,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = tf.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    task = progress.add("train the example language model", total=steps) if progress else None
    model.train()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        w = random_windows(data.train, context, batch_size, gen)
        loss = F.cross_entropy(model(w[:, :-1]).logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if task is not None:
            progress.advance(task)
    model.eval()
    # the windows `compress` scores on (tasks.causal_lm: up to 256 validation windows), so the figures agree
    ce, acc, _ = token_scores(lambda x: model(x).logits, windows(data.val, context, limit=256))
    try:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    except OSError as e:
        raise OutputError(f"cannot write the model to {out}: {e.strerror or e}") from None
    return {"path": str(out), "corpus": str(corpus), "params": sum(p.numel() for p in model.parameters()),
            "val_perplexity": math.exp(ce), "val_next_token_accuracy": acc, "steps": steps,
            "train_tokens": len(data.train), "seconds": time.perf_counter() - start}
