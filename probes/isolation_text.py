"""Isolation in unspaced text: which substrings of a blocked message make up the rule.

For scripts written without spaces (Chinese), a rule's components are substrings, not words:
`法轮功`, or `新疆` + `集中營` anywhere in one message. probes.isolation works on a set of words;
this module works on the characters of one text, as Citizen Lab's comp_aware_bin_split does
(Xiong and Knockel, "An Efficient Method to Determine which Combination of Keywords Triggered
Automatic Filtering of a Message", FOCI 2019; citizenlab/censored-keyword-isolation). A test
sends a list of fragments (substrings of the message); the channel joins them with a
separator (a space for our message channels), which no component spans.

Method (one rule, the one whose first component starts last; written from the paper's
description and the published algorithm, with one change):
- the start of the next component: binary search for the latest i such that the components
  found so far plus the suffix text[i:] still block (log2 of the remaining length);
- its end: the shortest text[i:j] such that the components, text[i:j] and text[i+1:] block.
  Citizen Lab tries j = i+1, i+2, ... in turn; we try i+2 first (Chinese keywords are rarely
  one character: 2 to 4 is the rule in the published lists) and i+1 only when i+2 blocks, which
  saves one test per component of three or more characters and costs one per component of one
  character;
  the end of a later component is searched from one past the end of the one before (one
  that ends within it is brought along by it);
- then whether the components found block alone (the rule is complete), else on to the right.
Every answer is cached and extended by monotonicity (fragments that are substrings of a
delivered test's fragments are delivered; fragments holding a blocked test's fragments are
blocked); an inconclusive answer is asked again (`retries`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

TextOracle = Callable[[list[str]], Awaitable[bool | None]]

# The first component length tried (see the module docstring).
FIRST_LENGTH = 2


class TextBudgetExhausted(Exception):
    """The test budget ran out before the search finished."""


@dataclass
class TextIsolation:
    """One rule (its components in message order) and what it cost."""

    components: list[str] = field(default_factory=list)
    tests: int = 0
    complete: bool = True
    stopped_by: str | None = None  # "budget" | "inconclusive" | None
    blocked: bool | None = None  # the whole message, when it was tested


def covered(small: tuple[str, ...], big: tuple[str, ...]) -> bool:
    """Whether each fragment of `small` is a substring of a fragment of `big`: a component
    found in `small` is then found in `big` too (components never span fragments)."""
    return all(any(part in whole for whole in big) for part in small)


class _Ask:
    """Asks the oracle, caching answers and inferring new ones by substring monotonicity."""

    def __init__(self, test: TextOracle, budget: int, retries: int) -> None:
        self.test, self.budget, self.retries = test, budget, retries
        self.tests = 0
        self.blocked: list[tuple[str, ...]] = []
        self.passed: list[tuple[str, ...]] = []

    def known(self, key: tuple[str, ...]) -> bool | None:
        if any(covered(b, key) for b in self.blocked):
            return True
        if any(covered(key, p) for p in self.passed):
            return False
        return None

    async def __call__(self, fragments: list[str]) -> bool:
        key = tuple(sorted(f for f in fragments if f))
        inferred = self.known(key)
        if inferred is not None:
            return inferred
        for _ in range(1 + self.retries):
            if self.tests >= self.budget:
                raise TextBudgetExhausted
            self.tests += 1
            answer = await self.test(list(key))
            if answer is not None:
                (self.blocked if answer else self.passed).append(key)
                return answer
        raise LookupError(key)


async def _latest_start(ask: _Ask, found: list[str], text: str) -> int:
    """The largest i with found + [text[i:]] blocked (text[0:] is known to block)."""
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await ask([*found, text[mid:]]):
            lo = mid
        else:
            hi = mid
    return lo


async def _shortest_end(ask: _Ask, found: list[str], text: str, i: int, floor: int) -> int:
    """The smallest j >= floor with found + [text[i:j], text[i+1:]] blocked."""
    rest = text[i + 1 :]

    async def blocks(j: int) -> bool:
        return j >= len(text) or await ask([*found, text[i:j], rest])

    low = max(i + 1, floor)
    first = max(low, min(i + FIRST_LENGTH, len(text)))
    if first > low:
        if await blocks(first):
            return low if await blocks(low) else first
        j = first + 1
    else:
        j = low
    while not await blocks(j):
        j += 1
    return j


async def isolate_text(
    text: str,
    test: TextOracle,
    *,
    budget: int = 400,
    retries: int = 3,
    known_blocked: bool = False,
) -> TextIsolation:
    """The components of one rule that blocks `text` (see the module docstring).

    `known_blocked`: the caller has just seen `text` blocked, so it is not sent again (Citizen
    Lab's algorithm assumes the same). Otherwise the whole text is tested first.
    """
    ask = _Ask(test, budget, retries)
    result = TextIsolation()
    try:
        if not known_blocked:
            result.blocked = await ask([text])
            if not result.blocked:
                result.tests = ask.tests
                return result
        found: list[str] = []
        rest, floor = text, 0
        while True:
            i = await _latest_start(ask, found, rest)
            j = await _shortest_end(ask, found, rest, i, floor)
            found.append(rest[i:j])
            if j >= len(rest):
                break
            # The next component starts after i and ends after j: one ending at or before j
            # would lie inside this one, which already brings it along.
            floor = j - i
            rest = rest[i + 1 :]
            if await ask(found):
                break
        result.components = found
    except TextBudgetExhausted:
        result.complete, result.stopped_by = False, "budget"
    except LookupError:
        result.complete, result.stopped_by = False, "inconclusive"
    result.tests = ask.tests
    return result
