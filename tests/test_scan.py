"""StreamMatcher: a pattern is found in streamed output however the output is cut into chunks,
without holding the output (the promise check of every chunk an agent prints)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from ralph.scan import StreamMatcher

PROMISE = "<promise>COMPLETE</promise>"
# Text made of the pattern's own bytes and near misses, so that partial matches and seams are common.
pieces = st.lists(st.sampled_from(["<", "<promise>", "COMPLETE", "</promise>", PROMISE, "x" * 7, "\n", "<p"]),
                  max_size=40)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(pieces, st.lists(st.integers(min_value=0, max_value=400), max_size=20), st.booleans())
def test_found_exactly_when_the_whole_output_holds_it(parts: list[str], cuts: list[int], upper: bool) -> None:
    text = "".join(parts)
    data = (text.upper() if upper else text).encode()
    for ignore_case in (False, True):
        matcher = StreamMatcher([PROMISE, "never there"], ignore_case=ignore_case)
        seen = any([matcher.feed(chunk) for chunk in _chunks(data, cuts)])
        expected = PROMISE.lower().encode() in data.lower() if ignore_case else PROMISE.encode() in data
        assert seen == expected == (matcher.found == PROMISE)


def test_a_pattern_cut_across_many_chunks_and_a_long_chunk_without_its_first_byte() -> None:
    matcher = StreamMatcher([PROMISE])
    assert not matcher.feed(b"x" * (1 << 20))  # no "<" at all: the quick path
    for byte in PROMISE.encode():
        matcher.feed(bytes([byte]))
    assert matcher.found == PROMISE


def test_no_patterns_never_match() -> None:
    matcher = StreamMatcher([], ignore_case=True)
    assert not matcher.feed(PROMISE.encode()) and matcher.found is None


ECHOED = f"Work on it.\n  {PROMISE}\nthen stop"  # the prompt: its second line is the promise alone


@settings(max_examples=300, deadline=None)
@given(pieces, st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_echo_filter_claims_exactly_the_lines_that_are_not_the_prompts(parts: list[str], cuts: list[int]) -> None:
    from ralph.scan import EchoFilter

    data = "".join(parts).encode()
    matcher = StreamMatcher([PROMISE])
    claims = EchoFilter(ECHOED, matcher)
    for chunk in _chunks(data, cuts):
        claims.feed(chunk)
    claims.flush()
    echo = {line.strip() for line in ECHOED.encode().splitlines()}
    expected = any(PROMISE.encode() in line for line in data.split(b"\n") if line.strip() not in echo)
    assert (matcher.found == PROMISE) == expected
