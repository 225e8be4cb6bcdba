"""Proof, before Ray starts, that every configuration a study's space can produce is a valid
TrainConfig: all categorical combinations, numeric ranges at both bounds, conditions applied.

A space whose combinations number more than MAX_COMBINATIONS is checked pair by pair instead:
every pair of parameters (with the parameters their conditions name) takes all its values while
the others keep their first, which finds every rule between two fields, the kind TrainConfig has.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from gan.config import make_config
from gan.errors import ConfigError

MAX_COMBINATIONS = 20_000


def active(when: dict | None, params: dict[str, Any]) -> bool:
    """Whether a parameter with this condition is sampled, given the earlier parameters."""
    for key, allowed in (when or {}).items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if key not in params or params[key] not in allowed:
            return False
    return True


def extremes(param: Any) -> list[Any]:
    """The values a parameter is checked at: every choice, or a range's two ends."""
    if hasattr(param, "choices"):
        return list(param.choices)
    if isinstance(param.low, int) and hasattr(param, "step"):  # the last value on the grid
        return sorted({param.low, param.low + (param.high - param.low) // param.step * param.step})
    return sorted({param.low, param.high})


def configurations(space: dict[str, Any], varied: set[str] | None = None
                   ) -> Iterator[dict[str, Any]]:
    """The parameter values of every configuration, in space order, conditions applied; with
    `varied`, only those parameters take all their values, the rest their first."""
    items = list(space.items())

    def walk(i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(items):
            yield dict(chosen)
            return
        key, param = items[i]
        if not active(param.when, chosen):
            yield from walk(i + 1, chosen)
            return
        values = extremes(param)
        for value in values if varied is None or key in varied else values[:1]:
            chosen[key] = value
            yield from walk(i + 1, chosen)
        chosen.pop(key, None)

    yield from walk(0, {})


def _with_conditions(space: dict[str, Any], keys: set[str]) -> set[str]:
    """The keys and, recursively, the parameters their conditions name."""
    out, todo = set(), list(keys)
    while todo:
        key = todo.pop()
        if key not in out:
            out.add(key)
            todo.extend((space[key].when or {}).keys())
    return out


def _candidates(space: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if math.prod(len(extremes(p)) for p in space.values()) <= MAX_COMBINATIONS:
        yield from configurations(space)
        return
    for a, b in itertools.combinations(space, 2):
        yield from configurations(space, _with_conditions(space, {a, b}))


def check_runnable(space: dict[str, Any], base: dict[str, Any], source: str) -> None:
    """Raise one line naming the two parameters that clash, the rule, and the condition that
    would keep them apart."""
    for params in _candidates(space):
        try:
            make_config({**base, **params})
        except ConfigError as err:
            raise ConfigError(f"{source}: {_explain(space, base, params, err)}") from None


def _explain(space: dict[str, Any], base: dict[str, Any], params: dict[str, Any],
             err: ConfigError) -> str:
    detail = str(err).split(": ", 1)[-1]
    field = detail.split(":", 1)[0]
    if field not in params:
        return f"space ({', '.join(f'{k}={v!r}' for k, v in params.items())}): {detail}"
    for other, value in params.items():
        if other == field:
            continue
        try:
            make_config({**base, field: params[field], other: value})
        except ConfigError:
            return _pair(space, base, field, other, params, detail)
    return f"space.{field} = {params[field]!r} in ({', '.join(params)}): {detail}"


def _pair(space: dict[str, Any], base: dict[str, Any], field: str, other: str,
          params: dict[str, Any], detail: str) -> str:
    said = (f"space.{field} = {params[field]!r} with space.{other} = {params[other]!r}: "
            f"{detail}")
    order = list(space)
    first, later = sorted((field, other), key=order.index)
    if not hasattr(space[first], "choices"):
        return f"{said}: narrow the ranges, or make one of them fixed"

    def fits(v: Any) -> bool:
        try:
            make_config({**base, first: v, later: params[later]})
            return True
        except ConfigError:
            return False

    allowed = [v for v in space[first].choices if fits(v)]
    return f"{said}: add `when: {{{first}: {allowed}}}` to space.{later}"
