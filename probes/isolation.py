"""Keyword-combination isolation: which words of a blocked message trigger the filter.

Pure logic, no I/O: the caller gives the words of a blocked message and an oracle
`test(words) -> True (blocked) | False (delivered) | None (inconclusive)`, which sends a message
made of exactly those words through a channel. Filters studied in the wild are conjunctive
rules: a message is blocked when it holds every part of at least one rule (`A+B+C`), rules of
one to five words (Knockel et al., "We Chat, They Watch", Citizen Lab 2020). Blocking is
therefore monotone in the set of words, and isolation is a search for all minimal
blocking subsets.

Method:
- one minimal blocking subset is found by binary-search deletion in message order (Citizen
  Lab's comp_aware_bin_split on words, Xiong and Knockel, FOCI 2019): binary-search the
  latest start of a suffix that still blocks, keep that word, go on to its right until the
  kept words block alone. About k*(log2(n) + 1) tests for a rule of k words among n (our
  earlier QuickXplain halving cost 2k*log2(n/k) + 2k);
- further rules: every other minimal rule misses at least one word of each rule found so far,
  so the message minus a hitting set of the found rules is tested for each minimal hitting
  set; a blocked one holds a new rule, which is then minimised the same way;
- every answer is cached and extended by monotonicity (a superset of a blocked set is
  blocked, a subset of a delivered set is delivered), which saves many tests;
- robustness: an inconclusive answer is asked again (up to `retries`); when an answer
  contradicts what monotonicity says of earlier answers, the disagreeing sets are asked
  again and the majority wins; each rule found is confirmed at the end with fresh tests
  (the rule blocks, each rule minus one word does not); a disagreement is settled by
  majority and the search runs again on the corrected answers;
- a budget caps the number of tests; a run out of budget says so (`complete = False`).

Anchor: Xiong and Knockel (FOCI 2019) needed about 35 messages per article to isolate the
keyword combinations of WeChat; bench/isolation.py reports our mean per rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

Oracle = Callable[[list[str]], Awaitable[bool | None]]

# Default test budget per isolation run: well above what a message of ~100 words with a few
# rules needs (bench/isolation.py), low enough that a broken channel stops early.
DEFAULT_BUDGET = 400
# How often an inconclusive answer is asked again before the search gives up on that set.
DEFAULT_RETRIES = 3
# Votes taken when answers disagree (odd, so there is a majority).
DEFAULT_VOTES = 3
# Search-and-confirm rounds before giving up on an oracle that keeps contradicting itself.
MAX_ROUNDS = 3


class BudgetExhausted(Exception):
    """The test budget ran out before the search finished."""


class Inconclusive(Exception):
    """A set of words gave no answer after every retry."""


@dataclass
class IsolationResult:
    """What the search found and what it cost."""

    rules: list[list[str]] = field(default_factory=list)  # minimal blocking combinations
    tests: int = 0  # oracle calls, retries included
    complete: bool = True  # False: budget or inconclusive answers stopped the search
    blocked: bool | None = None  # the whole message, as first tested
    stopped_by: str | None = None  # "budget" | "inconclusive" | "disagreement" | None
    unconfirmed: list[list[str]] = field(default_factory=list)  # rules re-tests kept disputing


class _Asker:
    """Asks the oracle, caches answers and infers new ones by monotonicity."""

    def __init__(self, test: Oracle, order: Sequence[str], budget: int, retries: int) -> None:
        self.test, self.budget, self.retries = test, budget, retries
        self.rank = {w: i for i, w in enumerate(order)}
        self.tests = 0
        self.blocked: list[frozenset[str]] = []  # minimal known-blocking sets
        self.passed: list[frozenset[str]] = []  # maximal known-delivered sets

    def ordered(self, words: frozenset[str]) -> list[str]:
        return sorted(words, key=self.rank.__getitem__)

    def known(self, words: frozenset[str]) -> bool | None:
        if any(b <= words for b in self.blocked):
            return True
        if any(words <= p for p in self.passed):
            return False
        return None

    async def raw(self, words: frozenset[str]) -> bool:
        """One conclusive answer from the oracle (inconclusive ones retried)."""
        for _ in range(1 + self.retries):
            if self.tests >= self.budget:
                raise BudgetExhausted
            self.tests += 1
            answer = await self.test(self.ordered(words))
            if answer is not None:
                return answer
        raise Inconclusive(self.ordered(words))

    async def vote(self, words: frozenset[str], votes: int = DEFAULT_VOTES) -> bool:
        """Majority of `votes` fresh answers, stopping once the majority is certain."""
        yes = no = 0
        need = votes // 2 + 1
        while yes < need and no < need:
            if await self.raw(words):
                yes += 1
            else:
                no += 1
        return yes >= need

    def learn(self, words: frozenset[str], answer: bool) -> None:
        if answer:
            self.blocked = [b for b in self.blocked if not words <= b] + [words]
        else:
            self.passed = [p for p in self.passed if not p <= words] + [words]

    def forget_contradictions(self, words: frozenset[str], answer: bool) -> None:
        """Drop cached answers that contradict a voted answer for `words`."""
        if answer:
            self.passed = [p for p in self.passed if not words <= p]
        else:
            self.blocked = [b for b in self.blocked if not b <= words]

    async def ask(self, words: frozenset[str]) -> bool:
        inferred = self.known(words)
        if inferred is not None:
            return inferred
        answer = await self.raw(words)
        contradicts = (answer and any(words <= p for p in self.passed)) or (
            not answer and any(b <= words for b in self.blocked)
        )
        if contradicts:  # cannot happen with a faithful oracle: settle it by majority
            answer = await self.vote(words)
            self.forget_contradictions(words, answer)
        self.learn(words, answer)
        return answer


async def _minimise(ask: _Asker, background: frozenset[str], candidates: list[str]) -> list[str]:
    """A minimal subset X of `candidates` with background | X blocked.

    Binary-search deletion in message order, the word form of Citizen Lab's
    comp_aware_bin_split (Xiong and Knockel, FOCI 2019; citizenlab/censored-keyword-isolation):
    the largest i whose suffix candidates[i:] (with the words kept so far) still blocks starts
    a rule, so candidates[i] is kept and the search goes on to the right of it, until the kept
    words block alone. About k * (log2(n) + 1) tests for a rule of k words among n, against
    2k * log2(n/k) + 2k for QuickXplain's halving, which this replaced.

    Precondition: background | candidates is blocked.
    """
    kept: list[str] = []
    rest = list(candidates)
    while True:
        # invariant: background | kept | rest is blocked
        lo, hi = 0, len(rest)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await ask.ask(background | frozenset(kept) | frozenset(rest[mid:])):
                lo = mid
            else:
                hi = mid
        kept.append(rest[lo])
        rest = rest[lo + 1 :]
        if not rest or await ask.ask(background | frozenset(kept)):
            return kept


def _minimal_hitting_sets(rules: list[frozenset[str]]) -> list[frozenset[str]]:
    """Every minimal set of words meeting each rule (small: rules are few and short)."""
    found: set[frozenset[str]] = set()
    for choice in itertools.product(*[sorted(r) for r in rules]):
        found.add(frozenset(choice))
    minimal = [h for h in found if not any(o < h for o in found)]
    return sorted(minimal, key=lambda h: (len(h), sorted(h)))


async def isolate(
    words: Sequence[str],
    test: Oracle,
    *,
    budget: int = DEFAULT_BUDGET,
    retries: int = DEFAULT_RETRIES,
    confirm: bool = True,
) -> IsolationResult:
    """Find every minimal blocking combination of `words` (duplicates ignored, order kept)."""
    order = list(dict.fromkeys(w for w in words if w))
    ask = _Asker(test, order, budget, retries)
    result = IsolationResult()
    rules: list[frozenset[str]] = []
    try:
        for _round in range(MAX_ROUNDS):
            rules = await _search(ask, frozenset(order), result)
            if not confirm or all([await _confirmed(ask, rule) for rule in rules]):
                break
            # A re-test disagreed with the search: the cache now holds the voted answers,
            # so searching again is cheap and follows the corrected answers.
        else:
            result.unconfirmed = [ask.ordered(r) for r in rules]
            result.complete, result.stopped_by = False, "disagreement"
            rules = []
    except BudgetExhausted:
        result.complete, result.stopped_by = False, "budget"
    except Inconclusive:
        result.complete, result.stopped_by = False, "inconclusive"
    result.rules = sorted(
        (ask.ordered(r) for r in rules), key=lambda r: (len(r), [ask.rank[w] for w in r])
    )
    result.tests = ask.tests
    return result


async def _search(
    ask: _Asker, everything: frozenset[str], result: IsolationResult
) -> list[frozenset[str]]:
    """Every minimal blocking subset of `everything`, as the (cached) answers say."""
    rules: list[frozenset[str]] = []
    result.blocked = await ask.ask(everything)
    if not result.blocked:
        return rules
    rules.append(frozenset(await _minimise(ask, frozenset(), ask.ordered(everything))))
    while True:
        new_rule = None
        for hitting in _minimal_hitting_sets(rules):
            rest = everything - hitting
            if rest and await ask.ask(rest):
                new_rule = frozenset(await _minimise(ask, frozenset(), ask.ordered(rest)))
                break
        if new_rule is None:
            return rules
        rules.append(new_rule)


async def _confirmed(ask: _Asker, rule: frozenset[str]) -> bool:
    """Re-test a rule with fresh answers: it blocks, and no word of it can go.

    A fresh answer that agrees with the search confirms; one that disagrees is settled by a
    majority vote, which then replaces what the cache held (the caller searches again).
    """
    checks = [(rule, True)] + [(rule - {w}, False) for w in rule if len(rule) > 1]
    for words, expected in checks:
        if await ask.raw(words) == expected:
            continue
        voted = await ask.vote(words)
        ask.forget_contradictions(words, voted)
        ask.learn(words, voted)
        if voted != expected:
            return False
    return True
