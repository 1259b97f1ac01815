"""The optimisation loop both trainers share: AdamW, linear warm-up then decay, gradient
clipping, and a running loss in the logs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ragfleet.runtime.errors import InvalidInput
from ragfleet.runtime.logging import get_logger

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

Batch = TypeVar("Batch")


def require_in_range(config: object, checks: dict[str, bool]) -> None:
    """Raises ``InvalidInput`` naming every field of ``config`` whose check is false."""
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise InvalidInput(f"{', '.join(bad)}: out of range in {config!r}")


@dataclass(frozen=True, slots=True)
class LoopResult:
    steps: int
    seconds: float
    final_loss: float
    """Mean loss over the last ``window`` steps."""


def optimise(
    parameters: Iterable[torch.nn.Parameter],
    epochs: Sequence[Sequence[Batch]],
    loss_of: Callable[[Batch], torch.Tensor],
    *,
    learning_rate: float,
    warmup_fraction: float,
    event: str,
    log_every: int = 10,
    window: int = 20,
    after_epoch: Callable[[int], None] | None = None,
) -> LoopResult:
    """Runs one optimiser step per batch of every epoch in ``epochs`` (each a sequence of
    batches), minimising ``loss_of(batch)``, and calls ``after_epoch(n)`` after epoch ``n``
    (from 1). Logs ``event`` with the running loss every ``log_every`` steps. Blocks; CPU or
    whatever device the parameters live on."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    parameters = list(parameters)
    total_steps = sum(len(batches) for batches in epochs)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    schedule = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        optimizer, math.ceil(total_steps * warmup_fraction), total_steps
    )
    started = time.monotonic()
    step, recent = 0, list[float]()
    for epoch, batches in enumerate(epochs):
        for batch in batches:
            loss = loss_of(batch)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            recent = [*recent[-(window - 1) :], float(loss.item())]
            if step % log_every == 0 or step == total_steps:
                log.info(
                    event,
                    epoch=epoch + 1,
                    step=step,
                    steps=total_steps,
                    loss=round(sum(recent) / len(recent), 4),
                    elapsed_s=round(time.monotonic() - started, 1),
                )
        if after_epoch is not None:
            after_epoch(epoch + 1)
    return LoopResult(
        steps=step,
        seconds=time.monotonic() - started,
        final_loss=sum(recent) / len(recent) if recent else math.nan,
    )
