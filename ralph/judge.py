"""Stop rules the runner asks after each iteration.

``NoProgress`` (``until.no_progress: N``): N iterations in a row that changed nothing in the working
tree, by the git snapshots taken before and after each (a commit made during the iteration counts as
a change). An iteration whose snapshots could not be taken says nothing either way and breaks the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ralph.git import Change


@dataclass
class NoProgress:
    limit: int
    streak: list[str] = field(default_factory=list)  # sessions in a row that changed nothing
    last_change: str | None = None  # the newest session that did change something

    def observe(self, session_id: str, change: Change | None) -> str | None:
        """The stop reason once the limit is reached, else None."""
        if change is None or change.changed:
            self.streak.clear()
            if change is not None:
                self.last_change = session_id
            return None
        self.streak.append(session_id)
        if len(self.streak) < self.limit:
            return None
        since = self.last_change or self.streak[0]
        noun = "iteration" if self.limit == 1 else "iterations"
        return f"no progress in {self.limit} {noun}: nothing changed since {since}"
