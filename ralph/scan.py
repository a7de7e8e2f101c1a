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


class EchoFilter:
    """Feeds ``matcher`` line by line, leaving out every line that repeats a line of the prompt: a
    CLI or script that echoes its prompt (which names the promise) has not claimed anything."""

    def __init__(self, prompt: str | None, matcher: StreamMatcher) -> None:
        self.matcher = matcher
        self.echo = {line.strip().encode("utf-8") for line in (prompt or "").splitlines() if line.strip()}
        self.pending = b""

    def feed(self, data: bytes) -> None:
        """Raw output, in chunks of any size."""
        if not self.echo:  # nothing to leave out: the chunk as it came
            self.matcher.feed(data)
            return
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:][-65536:]
        if self.matcher.found is not None:
            return
        # A pattern is found within one line: a chunk of whole lines without any (the usual case)
        # needs no splitting (memchr-speed search instead of a Python loop over its lines).
        probe = data.lower() if self.matcher.ignore_case else data
        if any(p in probe for p in self.matcher.patterns):
            self._lines(data[:cut].split(b"\n")[:-1])

    def feed_text(self, text: str) -> None:
        """Text that is whole lines already (what a preset's parser calls the model's words)."""
        self._lines(text.encode("utf-8").split(b"\n"))

    def flush(self) -> None:
        rest, self.pending = self.pending, b""
        if rest:
            self._lines([rest])

    def _lines(self, lines: list[bytes]) -> None:
        kept = [line for line in lines if line.strip() not in self.echo]
        if kept:  # one feed per chunk, not per line
            self.matcher.feed(b"\n".join(kept) + b"\n")
