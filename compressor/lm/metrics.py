"""Language-model metrics: perplexity, next-token accuracy, last-word accuracy.

Every metric takes `logits_fn(ids) -> logits` (ids (B, T) int64 -> (B, T, vocab)), so the
same code scores a PyTorch size, a nested slice during training, or an ONNX file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .corpus import Passage

__all__ = ["LMScores", "LogitsFn", "last_word_accuracy", "score", "token_scores"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LMScores:
    perplexity: float  # exp(mean next-token cross-entropy) over every validation token, in tokens
    next_token_accuracy: float  # share of validation tokens whose greedy prediction is the next token
    last_word_accuracy: float | None  # held-out passages whose last word greedy decoding reproduces
    cross_entropy: float  # nats per token
    tokens: int
    passages: int
    argmax: torch.Tensor | None = None  # greedy next-token predictions (for agreement with the teacher)

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "next_token_accuracy": self.next_token_accuracy,
                "last_word_accuracy": self.last_word_accuracy, "cross_entropy": self.cross_entropy,
                "tokens": self.tokens, "passages": self.passages}


@torch.no_grad()
def token_scores(logits_fn: LogitsFn, windows: torch.Tensor, batch_size: int = 16) -> tuple[float, float, torch.Tensor]:
    """(cross-entropy in nats per token, next-token accuracy, argmax predictions) on `windows`
    (N, T + 1): inputs [:, :-1], targets [:, 1:]."""
    total, correct, count, preds = 0.0, 0, 0, []
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        logits = torch.as_tensor(logits_fn(w[:, :-1])).float()
        target = w[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        pred = logits.argmax(-1)
        correct += int((pred == target).sum())
        count += target.numel()
        preds.append(pred)
    return total / count, correct / count, torch.cat(preds)


@torch.no_grad()
def last_word_accuracy(logits_fn: LogitsFn, tokenizer: Any, passages: Sequence[Passage], context: int) -> float | None:
    """Share of `passages` whose last word greedy decoding reproduces exactly (LAMBADA's rule):
    the model sees the passage's last `context` tokens and must emit the word's tokens, one
    argmax at a time; a wrong token anywhere fails the passage."""
    if not passages:
        return None
    hits = 0
    for p in passages:
        ids = tokenizer(p.context, add_special_tokens=False)["input_ids"]
        # the word as it continues the passage: tokenised after its space, as the text has it
        word = tokenizer(p.context + p.word, add_special_tokens=False)["input_ids"][len(ids):]
        if not word:
            continue
        seq = torch.tensor([ids[-(context - len(word)):]], dtype=torch.long)
        ok = True
        for want in word:
            nxt = int(torch.as_tensor(logits_fn(seq))[0, -1].argmax())
            if nxt != want:
                ok = False
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
        hits += ok
    return hits / len(passages)


def score(logits_fn: LogitsFn, windows: torch.Tensor, tokenizer: Any, passages: Sequence[Passage],
          context: int, *, last_word_fn: LogitsFn | None = None) -> LMScores:
    """Every metric of one model; `last_word_fn` (default `logits_fn`) runs the greedy decoding."""
    ce, acc, argmax = token_scores(logits_fn, windows)
    lw = last_word_accuracy(last_word_fn or logits_fn, tokenizer, passages, context)
    return LMScores(perplexity=math.exp(ce), next_token_accuracy=acc, last_word_accuracy=lw, cross_entropy=ce,
                    tokens=int(windows[:, 1:].numel()), passages=len(passages), argmax=argmax)
