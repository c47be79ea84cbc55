"""Isolation in unspaced text against Citizen Lab's anchor: tests per rule, ours and theirs.

Citizen Lab's censored-keyword-isolation (comp_aware_bin_split, Xiong and Knockel, FOCI 2019)
reports, on its own simulator, 12 sends for one keyword in a 166-character message, 22 for a
2-keyword combination in 219 characters and 26 for a 4-keyword combination in 17 characters.
Both algorithms run here against the same simulated filter (a rule blocks a message whose text,
fragments joined by a separator, holds each of its components), which is how their simulator
decides; `citizenlab_bin_split` is our reproduction of their algorithm, written from its source,
and gives their published counts on their cases.

Cases:
- "shape": messages of our own with the anchor's lengths and rule shapes (one 3-character
  keyword in 166 characters; 2 + 3 characters in 219; four 2-character components, two of them
  overlapping, in 17), keywords and positions drawn at random (`--trials`, `--seed`);
- "citizenlab": their three articles and rules, read (never executed) from a copy of their
  simulator.py when `--citizenlab-simulator PATH` is given (not shipped with censorscope).

    python bench/isolation_text.py [--trials 500] [--seed 1] [--citizenlab-simulator PATH]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.isolation_text import isolate_text

SEPARATOR = "\x00"
Rule = frozenset[str]
Censored = Callable[[list[str]], bool]


def filter_of(rules: list[Rule]) -> Callable[[list[str]], bool]:
    def censored(fragments: list[str]) -> bool:
        message = SEPARATOR.join(fragments)
        return any(all(part in message for part in rule) for rule in rules)

    return censored


def citizenlab_bin_split(text: str, censored: Censored) -> list[str]:
    """Our reproduction of comp_aware_bin_split (censored-keyword-isolation, algorithms.py):
    the latest suffix start that still blocks, then the end found by trying each length in
    turn from one past the previous component's end, then whether the parts block alone."""
    parts: list[str] = []
    end = 0
    while True:
        lo, hi = 0, len(text)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if censored([*parts, text[mid:]]):
                lo = mid
            else:
                hi = mid
        start = lo
        end = max(start + 1, end)
        limit = len(text)
        while end < limit:
            if censored([*parts, text[start:end], text[start + 1 :]]):
                limit = end
            else:
                end += 1
        parts.append(text[start:end])
        text = text[start + 1 :] if end != len(text) else ""
        if not text or censored(parts):
            return parts
        end -= start


def count_citizenlab(text: str, rules: list[Rule]) -> tuple[int, list[str]]:
    censored = filter_of(rules)
    sent = 0

    def counted(fragments: list[str]) -> bool:
        nonlocal sent
        sent += 1
        return censored(fragments)

    parts = citizenlab_bin_split(text, counted)
    return sent, parts


def count_ours(text: str, rules: list[Rule]) -> tuple[int, list[str]]:
    censored = filter_of(rules)

    async def oracle(fragments: list[str]) -> bool:
        return censored(fragments)

    result = asyncio.run(isolate_text(text, oracle, known_blocked=True))
    return result.tests, result.components


# Characters of the synthetic messages: CJK ideographs, fillers and keywords drawn apart.
_CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def _shape_case(rng: random.Random, case: str) -> tuple[str, list[Rule]]:
    """A message of the anchor's length and rule shape, with random keywords and positions."""
    keyword_chars = rng.sample(_CJK, 12)
    filler = [c for c in _CJK if c not in keyword_chars]

    def fill(n: int) -> list[str]:
        return [rng.choice(filler) for _ in range(n)]

    if case == "1 keyword, 166 chars":
        word = "".join(keyword_chars[:3])
        at = rng.randrange(0, 166 - 3)
        text = fill(166)
        text[at : at + 3] = list(word)
        return "".join(text), [frozenset({word})]
    if case == "2 keywords, 219 chars":
        first, second = "".join(keyword_chars[:2]), "".join(keyword_chars[2:5])
        text = fill(219)
        a = rng.randrange(0, 219 - 5)
        b = rng.randrange(a + 2, 219 - 3 + 1)
        text[a : a + 2] = list(first)
        text[b : b + 3] = list(second)
        return "".join(text), [frozenset({first, second})]
    # four 2-character components in 17 characters, two overlapping (ABC holds AB and BC)
    a, b, c, d, e, f, g = keyword_chars[:7]
    pieces = [a + b, c + d + e, f + g]
    text = fill(17 - 7)
    for piece in pieces:
        text.insert(rng.randrange(0, len(text) + 1), piece)
    message = "".join(text)
    return message, [frozenset({a + b, c + d, d + e, f + g})]


CASES = ("1 keyword, 166 chars", "2 keywords, 219 chars", "4 keywords, 17 chars")
ANCHOR = {CASES[0]: 12, CASES[1]: 22, CASES[2]: 26}


def _read_simulator(path: Path) -> tuple[list[str], list[Rule]]:
    """`articles` and `keywords` of their simulator.py, by parsing (nothing is executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    articles = ast.literal_eval(found["articles"])
    keywords = found["keywords"]
    assert isinstance(keywords, ast.Set)
    rules = [frozenset(ast.literal_eval(call.args[0])) for call in keywords.elts]  # type: ignore[attr-defined]
    return articles, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--citizenlab-simulator", type=Path, default=None)
    args = parser.parse_args()
    print(
        "| case | messages | Citizen Lab (anchor) | Citizen Lab, reproduced | ours "
        "| ours <= theirs |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    if args.citizenlab_simulator is not None:
        articles, rules = _read_simulator(args.citizenlab_simulator)
        for case, article in zip(CASES, articles, strict=True):
            present = [r for r in rules if all(p in article for p in r)]
            theirs, their_parts = count_citizenlab(article, present)
            ours, our_parts = count_ours(article, present)
            assert sorted(their_parts) == sorted(our_parts), (their_parts, our_parts)
            print(
                f"| {case} (their article) | 1 | {ANCHOR[case]} | {theirs} | {ours} | "
                f"{'yes' if ours <= theirs else 'no'} |"
            )
    rng = random.Random(args.seed)
    for case in CASES:
        theirs_all, ours_all, at_most = [], [], 0
        for _ in range(args.trials):
            text, rules = _shape_case(rng, case)
            theirs, their_parts = count_citizenlab(text, rules)
            ours, our_parts = count_ours(text, rules)
            truth = sorted(next(iter(rules)))
            assert sorted(our_parts) == truth, (text, our_parts, truth)
            assert sorted(their_parts) == truth, (text, their_parts, truth)
            theirs_all.append(theirs)
            ours_all.append(ours)
            at_most += ours <= theirs
        print(
            f"| {case} (same shape, random) | {args.trials} | {ANCHOR[case]} | "
            f"{statistics.mean(theirs_all):.1f} (max {max(theirs_all)}) | "
            f"{statistics.mean(ours_all):.1f} (max {max(ours_all)}) | "
            f"{at_most / args.trials:.0%} |"
        )


if __name__ == "__main__":
    main()
