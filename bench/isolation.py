"""Isolation cost: tests (messages) per isolated rule against simulated conjunctive filters.

Each trial plants 1-3 random rules of 1-5 words in a message of N distinct words (an
"article"), runs probes.isolation.isolate against the simulated filter and counts oracle
calls. Published anchor: about 35 messages per article (Xiong and Knockel, FOCI 2019).

    python bench/isolation.py [--trials 500] [--words 40,100,300] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.isolation import isolate


def plant(rng: random.Random, words: list[str]) -> list[frozenset[str]]:
    rules = []
    for _ in range(rng.randint(1, 3)):
        rules.append(frozenset(rng.sample(words, rng.randint(1, min(5, len(words))))))
    return rules


async def trial(
    rng: random.Random, n: int, *, confirm: bool, flaky: float
) -> tuple[int, int, bool]:
    words = [f"w{i}" for i in range(n)]
    rules = plant(rng, words)

    async def oracle(message: list[str]) -> bool | None:
        if flaky and rng.random() < flaky:
            return None
        present = set(message)
        return any(rule <= present for rule in rules)

    result = await isolate(words, oracle, confirm=confirm, budget=2000, retries=10)
    truth = {r for r in rules if not any(o < r for o in rules)}
    exact = result.complete and {frozenset(r) for r in result.rules} == truth
    return result.tests, len(result.rules), exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--words", default="40,100,300")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| words | confirm | lost answers | tests/article | tests/rule | rules/article | exact |")
    print("| ---: | :---: | ---: | ---: | ---: | ---: | ---: |")
    for n in [int(x) for x in args.words.split(",")]:
        for confirm, flaky in ((False, 0.0), (True, 0.0), (True, 0.1)):
            rng = random.Random(args.seed)
            tests = rules = exact = 0
            per_article = []
            for _ in range(args.trials):
                t, r, ok = asyncio.run(trial(rng, n, confirm=confirm, flaky=flaky))
                tests += t
                rules += r
                exact += ok
                per_article.append(t)
            print(
                f"| {n} | {'yes' if confirm else 'no'} | {flaky:.0%} | "
                f"{statistics.mean(per_article):.1f} | {tests / max(rules, 1):.1f} | "
                f"{rules / args.trials:.2f} | {exact / args.trials:.1%} |"
            )


if __name__ == "__main__":
    main()
