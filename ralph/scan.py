"""Finding a string in streamed output without holding the output: only the last
``len(pattern) - 1`` bytes are carried from one chunk to the next."""

from __future__ import annotations


class StreamMatcher:
    def __init__(self, patterns: list[str] | tuple[str, ...], ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        self.patterns = [(p.lower() if ignore_case else p).encode("utf-8") for p in patterns if p]
        self.keep = max((len(p) for p in self.patterns), default=1) - 1
        self.tail = b""
        self.found: str | None = None
        self._originals = [p for p in patterns if p]

    def feed(self, data: bytes) -> bool:
        if self.found is not None or not self.patterns or not data:
            return self.found is not None
        if self.ignore_case:
            data = data.lower()
        # Only the seam between the carried tail and the new chunk needs a copy.
        seam = self.tail + data[: self.keep] if self.tail else b""
        for pattern, original in zip(self.patterns, self._originals, strict=True):
            # memchr for the first byte first: most chunks do not hold even that, and finding it
            # is ~10x quicker than searching for the whole pattern (which starts from there).
            start = data.find(pattern[0])
            if (start >= 0 and data.find(pattern, start) >= 0) or (seam and pattern in seam):
                self.found = original
                return True
        if self.keep:
            self.tail = (self.tail + data)[-self.keep:] if len(data) < self.keep else data[-self.keep:]
        return False
