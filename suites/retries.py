"""The rows of one point through a worker, around a lost worker: the row in flight is blamed, the rest run
again, so a crash or a hang in one implementation costs that row and never the sweep."""

from __future__ import annotations

from collections.abc import Iterator

from suites.failures import failed_row
from suites.suite_model import Point
from suites.worker import InlineWorker, Worker, WorkerLost


def measure_point(worker: Worker | InlineWorker, point: Point, todo: list[str], base: dict) -> Iterator[dict]:
    """The point's rows (`base`: the columns a failed row carries); when the worker is lost, the row in flight
    is blamed and the rest run again.

    Lost in a row's check or in point setup: that row (all of them, for setup) gets the failure. Lost while
    several rows were timed together: the culprit is unknown, so each of them is measured again alone, and
    only a row that loses a worker on its own is blamed. Each retry has fewer rows, so this ends.
    """
    queue: list[tuple[list[str], str | None]] = [(todo, None)]
    while queue:
        names, note = queue.pop(0)
        done: set[str] = set()
        try:
            for row in worker.run_point(point, names, note):
                done.add(row["impl"])
                yield row
        except WorkerLost as lost:
            left = [n for n in names if n not in done]
            status = "timeout" if lost.timed_out else "error"
            if lost.stage == "timing" and len(lost.rows) > 1:
                alone = "timed alone: a worker was lost while this point's rows were timed together"
                queue[:0] = [([n], alone) for n in left]
                continue
            blamed = [n for n in lost.rows if n in left] if lost.stage in ("check", "timing") else []
            blamed = blamed or left  # setup, start-up, or a stage naming no row still to come: all of them
            for name in blamed:
                yield failed_row(base, name, status, lost.reason)
            rest = [n for n in left if n not in blamed]
            if rest:
                queue.insert(0, (rest, note))
