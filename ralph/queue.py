"""The shared batch queue: with a PostgreSQL history, every host running the same batch (same loop,
same batch ID) takes its items from one queue, ``parallel`` at a time.

A claim is a row lease (``FOR UPDATE SKIP LOCKED``, so two hosts never wait on or take the same
item) that a thread renews while the item runs; the item's end marks it done. A host that dies (or
is cut off) stops renewing: once its lease expires another host, or a later run, takes the item
over and continues it where its sessions stopped (the ``--resume`` numbering). A host with nothing
left to claim waits while other hosts' items are leased, and ends when every item has ended.
Lease times are the database server's clock, so hosts' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ralph.config import Batch
from ralph.errors import RalphError
from ralph.interrupt import CancelToken
from ralph.store import ResumePoint, Store
from ralph.store.base import _hostname

POLL = 1.0  # seconds between looks at a batch whose remaining items other hosts are running
NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@dataclass(frozen=True)
class Claim:
    item: str
    point: ResumePoint | None  # where earlier holders of the item stopped (None: a fresh item)
    taken_from: str | None  # the run that held it before (a takeover), if any


class BatchQueue:
    def __init__(self, store: Store, loop: str, batch: str, run_id: str, items: list[str], lease: float,
                 cancel: CancelToken, warn: Callable[[str], None], only: bool = False) -> None:
        self.store, self.loop, self.batch, self.run_id = store, loop, batch, run_id
        self.items, self.lease, self.cancel, self.warn = list(items), lease, cancel, warn
        # --item / --shard: this host takes only its own items. Otherwise any item of the batch (no
        # item list in every claim: matching it is a cost per item that grows with the batch).
        self._only = "AND item = ANY(?) " if only else ""
        self._only_args: tuple[Any, ...] = (self.items,) if only else ()
        self.host, self._pid = _hostname(), os.getpid()
        self._held: set[str] = set()  # items this run has claimed and not ended
        self._lost: set[str] = set()  # of those, items whose lease another run has taken
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- the rows --------------------------------------------------------------------------------
    def seed(self) -> None:
        """Every host adds the items it knows (the first one creates them; the rest find them there)."""
        def body(db: Any) -> None:
            for position, item in enumerate(self.items):
                db.execute("INSERT INTO batch_items (loop, batch, item, position, status, claims) "
                           "VALUES (?, ?, ?, ?, 'pending', 0) ON CONFLICT DO NOTHING",
                           (self.loop, self.batch, item, position))

        self.store.atomically(body)

    def claim(self) -> Claim | None:
        # One statement, one round trip: pick the first free item (skipping rows another host is
        # claiming this very moment) and lease it; ``before`` is who held it last.
        found = self.store.rows(
            f"WITH next AS (SELECT item, run_id AS before FROM batch_items WHERE loop = ? AND batch = ? {self._only}"  # noqa: S608
            f"AND (status = 'pending' OR (status = 'leased' AND lease_until < {NOW})) "
            "ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"UPDATE batch_items b SET status = 'leased', run_id = ?, host = ?, pid = ?, lease_until = {NOW} + ?, "
            f"claims = claims + 1, updated = {NOW} FROM next WHERE b.loop = ? AND b.batch = ? AND b.item = next.item "
            "RETURNING b.item, next.before",
            (self.loop, self.batch, *self._only_args, self.run_id, self.host, self._pid, self.lease, self.loop,
             self.batch))
        if not found:
            return None
        row = found[0]
        item, before = row["item"], row["before"]
        self._held.add(item)
        self._lost.discard(item)  # its taker's lease ran out in turn: this run continues it
        if before is None:  # a fresh item: nothing to continue
            return Claim(item, None, None)
        self.store.mark_abandoned(self.warn)  # a dead holder on this host may have left its agent running
        point = self.store.item_resume_point(self.loop, self.batch, item)
        if point is not None:
            self.warn(f"item {item}: taken over from run {before}; continuing after iteration "
                      f"{point.last_iteration}")
        return Claim(item, point, before)

    def _left(self) -> dict[str, Any]:
        """Items not ended yet that another run holds, and when the first of those leases expires."""
        return self.store.rows(
            f"SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS pending, "  # noqa: S608
            f"min(lease_until) - {NOW} AS wait FROM batch_items "
            f"WHERE loop = ? AND batch = ? {self._only}AND status <> 'done' "
            "AND NOT (status = 'leased' AND run_id = ?)",
            (self.loop, self.batch, *self._only_args, self.run_id))[0]

    def next(self) -> Claim | None:
        """The next item for this host; waits while only other hosts' leased items are left."""
        while not self.cancel.cancelled:
            claim = self.claim()
            if claim is not None:
                return claim
            left = self._left()
            if not left["n"]:
                return None
            if left["pending"]:  # free items another host was claiming at that instant: try again
                self.cancel.wait(0.01)
                continue
            # Others' items are running: look again when the first lease could expire, and every
            # second meanwhile (their items ending is what lets this host end).
            wait = left["wait"] if left["wait"] is not None else self.lease / 4
            self.cancel.wait(min(max(wait, 0.02), self.lease / 2, POLL))
        return None

    def finish(self, item: str, status: str) -> None:
        """The item ended (done for good), or was interrupted (back in the queue, to be continued)."""
        self._held.discard(item)
        final = status not in ("interrupted", "lost")
        changed = self.store.rows(
            f"UPDATE batch_items SET status = ?, result = ?, lease_until = NULL, updated = {NOW} "  # noqa: S608
            "WHERE loop = ? AND batch = ? AND item = ? AND run_id = ? AND status = 'leased' RETURNING item",
            ("done" if final else "pending", status, self.loop, self.batch, item, self.run_id))
        if not changed and status != "lost":
            self.warn(f"item {item}: its lease was lost while it ran (another host may have taken it over)")

    def lost(self, item: str) -> bool:
        """Another run took this item over (this host was cut off past its lease): stop it."""
        return item in self._lost

    def release(self, item: str) -> None:
        """Best effort after an error: back in the queue now, not after the lease runs out."""
        with contextlib.suppress(RalphError):  # the database is gone: the lease expires by itself
            self.finish(item, "interrupted")

    # -- the lease renewal -----------------------------------------------------------------------
    def start(self) -> None:
        self._renewer = threading.Thread(target=self._renew, name="ralph-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            held = set(self._held)
            try:
                renewed = self.store.rows(
                    f"UPDATE batch_items SET lease_until = {NOW} + ? WHERE loop = ? AND batch = ? "  # noqa: S608
                    "AND run_id = ? AND status = 'leased' RETURNING item",
                    (self.lease, self.loop, self.batch, self.run_id))
            except RalphError as exc:
                self.warn(f"cannot renew the batch leases: {exc}")
                continue
            # Held here but no longer ours: taken over while this host could not renew. Its
            # current iteration ends; no further one starts here (one host per item at a time).
            for item in sorted(held & self._held - {r["item"] for r in renewed} - self._lost):
                self._lost.add(item)
                self.warn(f"item {item}: another host took it over (this host could not renew its lease in "
                          "time); stopping it after the current iteration")

    def close(self) -> None:
        self._stop.set()
        if self._renewer is not None:  # mid-renewal against a database that is gone: do not wait it out
            self._renewer.join(timeout=1.0)

    # -- the workers -----------------------------------------------------------------------------
    def run(self, one: Callable[[str, ResumePoint | None], Any], parallel: int) -> list[Any]:
        """``parallel`` workers, each taking the next item until none is left; the results in the
        order the items ended."""
        results: list[Any] = []

        def worker() -> None:
            while (claim := self.next()) is not None:
                try:
                    result = one(claim.item, claim.point)
                except BaseException:
                    self.release(claim.item)
                    raise
                self.finish(claim.item, result.status)
                results.append(result)

        if parallel <= 1:
            worker()
            return results
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="ralph-item") as pool:
            for future in [pool.submit(worker) for _ in range(parallel)]:
                future.result()
        return results


def shared_queue(store: Store, loop: str, batch: str | None, run_id: str, items: list[str | None],
                 config: Batch | None, cancel: CancelToken, warn: Callable[[str], None],
                 only: bool = False) -> BatchQueue | None:
    """The queue of this run's batch, when its history is shared (PostgreSQL); else None."""
    if not store.shared or batch is None or config is None:
        return None
    queue = BatchQueue(store, loop, batch, run_id, [i for i in items if i is not None], config.lease, cancel, warn,
                       only)
    queue.seed()
    queue.start()
    return queue
