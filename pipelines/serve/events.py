"""What flows from a batch's ``generate`` to the requests in it, typed.

The generate thread queues a :class:`RowNews` per new piece of a row's text and, once
``generate`` has returned or raised, :data:`GENERATE_ENDED`. The event loop merges what is queued
into a step: one :data:`RowEvent` per request of the batch, which ``@serve.batch`` hands to each
request as its own entry.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class Delta:
    """A row's text since the last step, its finish reason once it has ended, and the tokens it
    has generated so far."""

    text: str
    finish_reason: str | None
    tokens: int

    @property
    def final(self) -> bool:
        return self.finish_reason is not None

    def then(self, later: Delta) -> Delta:
        """This delta and a later one of the same row, as one."""
        return Delta(self.text + later.text, later.finish_reason, later.tokens)


@dataclass(frozen=True)
class RowNews:
    """One piece of news from the generate thread: ``delta`` for row ``row`` of the batch."""

    row: int
    delta: Delta


class Ended(enum.Enum):
    GENERATE_ENDED = "generate returned or raised; nothing more comes from the thread"


GENERATE_ENDED = Ended.GENERATE_ENDED


@dataclass(frozen=True)
class Failed:
    """The row's own failure (its request gets a server error; the batch's other rows go on)."""

    error: Exception


class RowMark(enum.Enum):
    QUIET = "no news for the row in this step"
    FINISHED = "the row ended in an earlier step; its request stops reading"


RowEvent = Delta | Failed | RowMark


def ends_row(event: RowEvent) -> bool:
    """True for the event after which a row has nothing more to say."""
    return isinstance(event, Failed) or (isinstance(event, Delta) and event.final)


def merge_queued(
    queue: asyncio.Queue, first: RowNews | Ended, finished: list[bool]
) -> tuple[list[RowEvent], bool]:
    """Merges ``first`` and every item already in ``queue`` into one step: per row its deltas
    joined, :attr:`RowMark.QUIET` for a row with no news, :attr:`RowMark.FINISHED` for a row that
    ended in an earlier step (``finished``). Also says whether the thread has ended. Merging
    keeps a slow reader from falling a token per step behind."""
    step: list[RowEvent] = [RowMark.FINISHED if f else RowMark.QUIET for f in finished]
    ended = False
    item = first
    while True:
        if item is GENERATE_ENDED:
            ended = True
        else:
            earlier = step[item.row]
            step[item.row] = earlier.then(item.delta) if isinstance(earlier, Delta) else item.delta
        if queue.empty():
            return step, ended
        item = queue.get_nowait()
