"""Which samples the verdict processor keeps in memory: the open ones, up to a bound."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from spotcheck.samples import SampleState


def is_closed(state: SampleState) -> bool:
    """A verdict is out for the sample's current results: nothing more happens to it unless a
    correction (or a resend) comes, and PostgreSQL then has all it takes to rebuild it."""
    return state.version > 0 and not state.dirty


class SampleCache:
    """Samples by task_id. When a batch is done (`settle`), its closed samples are let go, and the
    open ones (a task waiting for results, a sample missing items) beyond `bound` too, least
    recently used first. A sample let go is rebuilt from PostgreSQL when it is named again: the
    bound is on memory only, and what a batch is working on is never let go before it is done."""

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("the bound of the sample cache must be at least 1")
        self.bound = bound
        self._held: OrderedDict[str, SampleState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def get(self, task_id: str) -> SampleState | None:
        return self._held.get(task_id)

    def remember(self, state: SampleState) -> None:
        """Hold `state`, as the most recently used."""
        task_id = state.task.task_id
        self._held[task_id] = state
        self._held.move_to_end(task_id)

    def settle(self, used: Iterable[str]) -> int:
        """After a batch that named the samples `used`: let the closed ones go, count the others as
        the most recently used, then let the least recently used go beyond the bound. Returns how
        many samples were let go."""
        before = len(self._held)
        for task_id in used:
            state = self._held.get(task_id)
            if state is None:
                continue
            if is_closed(state):
                del self._held[task_id]
            else:
                self._held.move_to_end(task_id)
        while len(self._held) > self.bound:
            self._held.popitem(last=False)
        return before - len(self._held)

    def clear(self) -> None:
        self._held.clear()
