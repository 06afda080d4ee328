"""Training that collapses is rolled back and continued at a lower learning rate.

The nested recipe's peak learning rate (1e-2, `pipeline._recipe`) is right for students with
BatchNorm; a student cut from a teacher without normalisation can collapse at it. SqueezeNet 1.1
trained on digits: the teacher-initialised TA starts at the teacher's 97 %, its accuracy on its own
training batches goes 95 -> 69 -> 20 % over the first three epochs as the one-cycle schedule warms
up, and the family ends at 34 % (in a 40-epoch run, 10 %, chance, by epoch 12). A user cannot see
that from outside.

`DivergenceGuard` looks at each epoch's mean loss and the trained network's accuracy on its own
training batches (free: the logits are there), against the best epoch's and the accuracy the
network started with (measured before the first step: a network cut from the teacher starts near
the teacher's accuracy, and one that collapses within its first epoch leaves the epoch figures
nothing to compare with). An epoch diverged when its
loss is not finite or that accuracy collapsed: it kept less than `collapse` (half) of its best
margin over chance, once that margin was worth keeping (a quarter of the room above chance). The
training state then goes back to where the lowest epoch loss was reached (weights, optimizer,
schedule position, random streams), and every learning rate of the schedule (peak, start, floor and
the current one) is scaled by `backoff`, at most `max_rollbacks` times. Each rollback is recorded
(`events`) and logged, and the state a checkpoint holds (`state`) carries the scale, so a resumed
run keeps the lower rate.

Why accuracy and not the loss alone: the loss of networks with BatchNorm also rises as the schedule
warms up, and they recover (ConvNeXt-atto at 0.5x: epoch loss 1.39 -> 3.08 -> 0.31 while the TA's
training accuracy stayed at 89-99 %). Rolled back on the loss's rise (1.25x its lowest), ConvNeXt-atto
at 0.5x ended 0.3-1.2 points lower at every size and RegNetX-002 at 0.5x up to 0.6 lower, while
ConvNeXt-atto at 0.25x gained 0.6 (one seed each; BENCHMARKS.md, "Distillation that diverges"); a
collapse toward chance is what no later epoch repairs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["DivergenceGuard", "LR_KEYS", "START_SAMPLES", "start_accuracy"]

# what a learning-rate schedule reads from an optimizer's parameter group (OneCycleLR: the peak
# max_lr, the start initial_lr, the floor min_lr), and the rate the next step uses
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


START_SAMPLES = 256  # training samples the starting accuracy is measured on


@torch.no_grad()
def start_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """`model`'s accuracy on the first `START_SAMPLES` of (x, y), in eval mode (no BatchNorm statistics
    change, nothing random): the same figure on every torchrun rank."""
    was_training = model.training
    model.eval()
    try:
        logits = model(x[:START_SAMPLES])
    finally:
        model.train(was_training)
    return float((logits.argmax(1) == y[:START_SAMPLES]).float().mean())


@dataclass
class DivergenceGuard:
    chance: float = 0.0  # the accuracy of guessing (1 / classes): a collapse is measured above it
    collapse: float = 0.5
    # a network counts as having something to lose once its best margin over chance is this share of
    # the room above chance: a new network's first epochs sit near chance, where an epoch's accuracy on
    # a few batches moves by as much as a collapse would
    min_margin: float = 0.25
    backoff: float = 0.3
    max_rollbacks: int = 3
    best_loss: float = math.inf
    best_accuracy: float | None = None
    scale: float = 1.0  # the learning rate's factor now: backoff ** rollbacks
    events: list[dict[str, Any]] = field(default_factory=list)
    _snapshot: tuple[dict[str, Any], float, int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_accuracy": self.best_accuracy, "scale": self.scale,
                "events": list(self.events)}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best_loss = float(state["best_loss"])
            self.best_accuracy = state.get("best_accuracy")
            self.scale = float(state["scale"])
            self.events = list(state["events"])

    # ------------------------------------------------------------------ loop
    def start(self, state: dict[str, Any], epoch: int, accuracy: float | None = None) -> None:
        """The state training starts (or resumes) from: where a divergence before any better epoch goes
        back to. `accuracy`: the network's accuracy before its first step (a network cut from the
        teacher starts near the teacher's, and can collapse within the first epoch)."""
        self._snapshot = (copy.deepcopy(state), self.scale, epoch)
        if accuracy is not None:
            self.best_accuracy = accuracy if self.best_accuracy is None else max(self.best_accuracy, accuracy)

    def collapsed(self, accuracy: float | None) -> bool:
        """Whether `accuracy` kept less than `collapse` of the best margin over chance seen so far."""
        if accuracy is None or self.best_accuracy is None:
            return False
        margin = self.best_accuracy - self.chance
        if margin < self.min_margin * (1 - self.chance):
            return False
        return accuracy - self.chance < self.collapse * margin

    def diverged(self, loss: float, accuracy: float | None = None) -> bool:
        """Whether an epoch that ended with mean loss `loss` and training accuracy `accuracy` diverged
        and is to be rolled back."""
        bad = not math.isfinite(loss) or self.collapsed(accuracy)
        return bad and self._snapshot is not None and len(self.events) < self.max_rollbacks

    def keep(self, loss: float, accuracy: float | None, state: Callable[[], dict[str, Any]], epoch: int) -> None:
        """After epoch `epoch`, which did not diverge: its state is the one to go back to if its loss is
        the lowest so far (`state` is only called then: it is copied)."""
        if accuracy is not None:
            self.best_accuracy = accuracy if self.best_accuracy is None else max(self.best_accuracy, accuracy)
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss = loss
            self._snapshot = (copy.deepcopy(state()), self.scale, epoch)

    def rollback(self, loss: float, accuracy: float | None, epoch: int, restore: Callable[[dict[str, Any]], None],
                 optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Go back to the kept state (`restore` loads it) with every learning rate scaled by `backoff`;
        returns the event recorded (epoch: the one that diverged; back_to: the epoch now resumed after)."""
        assert self._snapshot is not None
        state, scale_then, back_to = self._snapshot
        restore(copy.deepcopy(state))  # the snapshot stays as it is, for a second rollback to the same place
        scale = self.scale * self.backoff
        for group in optimizer.param_groups:  # the restored groups hold the rates of the snapshot's time
            for key in LR_KEYS:
                if key in group:
                    group[key] = group[key] * scale / scale_then
        self.scale = scale
        event = {"epoch": epoch, "loss": loss if math.isfinite(loss) else str(loss),
                 "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,  # None: no epoch kept yet
                 "accuracy": accuracy, "best_accuracy": self.best_accuracy, "back_to": back_to, "lr_scale": scale}
        self.events.append(event)
        return event

    @staticmethod
    def describe(event: dict[str, Any]) -> str:
        loss = event["loss"]
        what = (f"loss {loss}" if isinstance(loss, str)  # not finite
                else f"training accuracy {event['accuracy']:.1%}, best {event['best_accuracy']:.1%}")
        return (f"training diverged in epoch {event['epoch']} ({what}): back to the end of epoch "
                f"{event['back_to']}, learning rate x{event['lr_scale']:.3g}")
