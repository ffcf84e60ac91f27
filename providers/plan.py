"""A flow of requests written once, run synchronously or under asyncio.

A backend operation that sends requests and decides what to send next from the answers (generate,
select by token probing, a dtype constraint, SGLang's select scoring) is written as a *plan*: a
generator that yields :class:`Call` objects -- "make this request" -- and gets each answer back as
the value of the ``yield``; its ``return`` value is the operation's result. :func:`run` carries a
plan out with the backend's synchronous methods, :func:`arun` with their async twins, so the logic
(the order of requests, how answers are read, the errors) exists once and both paths follow it.

The async twin of a method is found by name -- ``"a"`` after any leading underscores:
``_complete`` -> ``_acomplete``, ``_create`` -> ``_acreate``, ``request`` -> ``arequest``.
An exception raised by a request is thrown into the plan at its ``yield`` (a plan may catch it, e.g.
to try an older route); one the plan does not catch propagates unchanged.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "Plan", "call", "async_name", "run", "arun"]


@dataclass(frozen=True)
class Call:
    """One request of a plan: ``owner.<method>(*args, **kwargs)`` (or its async twin)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


#: A plan: yields :class:`Call`, receives each call's result, returns the operation's result.
Plan = Generator[Call, Any, Any]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """``yield call("_complete", request, params)`` inside a plan."""
    return Call(method, args, kwargs)


def async_name(method: str) -> str:
    """The name of ``method``'s async twin: ``_complete`` -> ``_acomplete``, ``request`` -> ``arequest``."""
    bare = method.lstrip("_")
    return method[: len(method) - len(bare)] + "a" + bare


def run(owner: Any, plan: Plan) -> Any:
    """Carry ``plan`` out with ``owner``'s synchronous methods; returns the plan's result."""
    try:
        step = next(plan)
        while True:
            try:
                value = getattr(owner, step.method)(*step.args, **step.kwargs)
            except Exception as err:  # noqa: BLE001 - the plan decides (it may catch it)
                step = plan.throw(err)
            else:
                step = plan.send(value)
    except StopIteration as done:
        return done.value
    finally:
        plan.close()


async def arun(owner: Any, plan: Plan) -> Any:
    """Carry ``plan`` out with ``owner``'s async methods (:func:`async_name`); returns its result."""
    try:
        step = next(plan)
        while True:
            try:
                value = await getattr(owner, async_name(step.method))(*step.args, **step.kwargs)
            except Exception as err:  # noqa: BLE001 - the plan decides (it may catch it)
                step = plan.throw(err)
            else:
                step = plan.send(value)
    except StopIteration as done:
        return done.value
    finally:
        plan.close()
