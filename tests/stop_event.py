"""A stop event that records how long the code under test asked to wait.

Sources wait through ``stop.wait(seconds)`` (pacing, budgets, back-offs), so a test can check
the waits the code *asked for* instead of timing it with the wall clock, and can set the stop
exactly when the code is inside the wait it means to test.
"""
from __future__ import annotations

import threading


class RecordingStop(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self._asked = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self._asked:
            self.waits.append(timeout)
            self._asked.notify_all()
        return super().wait(timeout)

    def wait_for_wait(self, at_least: float, within: float = 30.0) -> float:
        """Block until the code under test asks for a wait of ``at_least`` seconds or more;
        return it. Fails the test if that never happens (the back-off was not reached)."""
        with self._asked:
            found = self._asked.wait_for(
                lambda: any(w is not None and w >= at_least for w in self.waits), within)
        assert found, f"no wait of {at_least} s or more was asked for; waits: {self.waits}"
        return max(w for w in self.waits if w is not None)


def join_or_fail(thread: threading.Thread, bound: float = 10.0) -> None:
    """The thread must end within ``bound`` seconds: far below the wait it was stopped in,
    so ending at all proves the stop cut the wait short."""
    thread.join(bound)
    assert not thread.is_alive(), "the stop did not interrupt the wait"
