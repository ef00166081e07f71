"""Countdown training problems: 3 numbers and a target, always solvable, deterministic from a seed.

The recipe is the Stream-of-Search generator that Countdown-Tasks-3to4 matches (see data/README.md):
numbers uniform in 1..99 (repeats allowed), target uniform in 10..100, numbers redrawn until a search
finds a solution that uses every number once, combining pairs with a+b, a*b, larger−smaller and
larger/smaller when it divides exactly (so every intermediate is a non-negative integer). The solution is
kept as an expression string. Problems whose number multiset appears in the test set are skipped.
"""
from __future__ import annotations

import random
from typing import Iterable


def _combinations(a: tuple[int, str], b: tuple[int, str]) -> Iterable[tuple[int, str]]:
    (x, ex), (y, ey) = (a, b) if a[0] >= b[0] else (b, a)
    yield x + y, f"({ex} + {ey})"
    yield x * y, f"({ex} * {ey})"
    yield x - y, f"({ex} - {ey})"
    if y and x % y == 0:
        yield x // y, f"({ex} / {ey})"


def reachable(items: list[tuple[int, str]]) -> dict[int, str]:
    """Every value the SoS search reaches using all `items` (value, expression) once, with one expression each."""
    if len(items) == 1:
        return {items[0][0]: items[0][1]}
    found: dict[int, str] = {}
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for combined in _combinations(items[i], items[j]):
                for value, expression in reachable(rest + [combined]).items():
                    found.setdefault(value, expression)
    return found


def _pair_values(x: int, y: int) -> list[int]:
    if x < y:
        x, y = y, x
    values = [x + y, x * y, x - y]
    if y and x % y == 0:
        values.append(x // y)
    return values


def _three_number_values(a: int, b: int, c: int) -> set[int]:
    """The values of `reachable` for three numbers, computed on integers only (the generator's hot loop)."""
    values: set[int] = set()
    for x, y, z in ((a, b, c), (a, c, b), (b, c, a)):
        for v in _pair_values(x, y):
            values.update(_pair_values(v, z))
    return values


def solve(nums: list[int], target: int) -> str | None:
    """An expression over all of `nums` (each once) equal to `target`, or None when the search finds none."""
    solution = reachable([(n, str(n)) for n in nums]).get(target)
    return _strip_outer_parentheses(solution) if solution else None


def _strip_outer_parentheses(expression: str) -> str:
    if expression.startswith("(") and expression.endswith(")"):
        depth = 0
        for i, ch in enumerate(expression):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and i < len(expression) - 1:
                return expression
        return expression[1:-1]
    return expression


def generate(count: int, seed: int, exclude: Iterable[Iterable[int]] = ()) -> list[dict]:
    """`count` problems {"nums", "target", "solution"}; the same (count, seed, exclude) gives the same list."""
    rng = random.Random(seed)
    excluded = {tuple(sorted(nums)) for nums in exclude}
    problems = []
    while len(problems) < count:
        target = rng.randint(10, 100)
        nums = [rng.randint(1, 99) for _ in range(3)]
        if tuple(sorted(nums)) in excluded:
            continue
        if target in _three_number_values(*nums):
            problems.append({"nums": nums, "target": target, "solution": solve(nums, target)})
    return problems
