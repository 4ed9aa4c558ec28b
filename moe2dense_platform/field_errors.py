"""Pydantic validation of user files made strict and readable: one line per bad field, at its dotted path.

`format_validation_error` renders a ValidationError as
    invalid <kind> <origin>:
      <dotted.path>: <message> (got <value, cut to 80 characters>)
and, given the validated model class, lists the keys a section allows for an unknown key (with the
closest one), and moves a section check raised as `field: message` to `section.field`.

`lax_number_errors` finds what pydantic's lax mode would silently convert [defined here]: a boolean
given for a number (`max_steps: true` → 1) and a non-finite float (`lr: .inf`, or the string "inf"),
returned as errors at their paths, to be raised with the model's other errors.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_SHOWN_INPUT = 80
"""Characters of a bad value quoted in an error line; longer values are cut with `…`."""

Loc = tuple[str | int, ...]


def format_validation_error(
    error: ValidationError, origin: str, kind: str = "recipe", model: type[BaseModel] | None = None
) -> str:
    """One line per error: `<dotted.path>: <message> (got <input>)`, headed by what is invalid and where
    the values came from (see the module docstring for what `model` adds)."""
    lines = [f"invalid {kind} {origin}:"]
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        section = _section_at(model, loc[:-1] if item["type"] == "extra_forbidden" else loc)
        if item["type"] == "extra_forbidden" and section is not None:
            message = _unknown_key(str(loc[-1]), list(section.model_fields))
        elif item["type"] in ("model_type", "model_attributes_type"):
            message = "Input should be a mapping (a section of named fields)"
        field, _, rest = message.partition(": ")
        if section is not None and field in section.model_fields and rest:
            loc, message = [*loc, field], rest
        if item["type"] not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), dict):
            message += f" (got {_shown(item.get('input'))})"
        path = ".".join(str(part) for part in loc) or "<root>"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def lax_number_errors(raw: Any, model: type[BaseModel], loc: Loc = ()) -> list[InitErrorDetails]:
    """Errors for each boolean given where `model`'s field wants a number, and each non-finite float,
    walking the raw mapping along the field annotations (unknown keys are pydantic's to report)."""
    errors: list[InitErrorDetails] = []
    if isinstance(raw, dict):
        for key, item in raw.items():
            field = model.model_fields.get(key) if isinstance(key, str) else None
            if field is not None:
                errors += _lax_value(item, field.annotation, (*loc, key))
    return errors


def _lax_value(item: Any, annotation: Any, loc: Loc) -> Iterator[InitErrorDetails]:
    section = _model_in(annotation)
    if isinstance(item, dict) and section is not None:
        yield from lax_number_errors(item, section, loc)
    elif isinstance(item, list | tuple):
        for index, element in enumerate(item):
            yield from _lax_value(element, annotation, (*loc, index))
    else:
        kinds = _leaf_types(annotation)
        if isinstance(item, bool) and bool not in kinds and kinds & {int, float}:
            yield _error(loc, item, "number_type", "Input should be a number, not a boolean")
        elif float in kinds and not isinstance(item, bool) and not math.isfinite(_as_float(item)):
            yield _error(loc, item, "finite_number", "Input should be a finite number")


def _leaf_types(annotation: Any) -> set[Any]:
    """Scalar types an annotation admits (`int | None` → {int, NoneType}; Literal → its values' types)."""
    if get_origin(annotation) is Literal:
        return {type(value) for value in get_args(annotation)}
    args = get_args(annotation)
    return set().union(*(_leaf_types(arg) for arg in args)) if args else {annotation}


def _as_float(item: Any) -> float:
    """`item` as pydantic's float would read it (numbers, numeric strings), else 0.0 (not ours to judge)."""
    try:
        return float(item) if isinstance(item, int | float | str) else 0.0
    except ValueError:
        return 0.0


def _error(loc: Loc, raw: Any, kind: str, message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=raw)


def _section_at(model: type[BaseModel] | None, loc: list[str | int]) -> type[BaseModel] | None:
    """The pydantic model class found at `loc` under `model` (list indices skipped), else None."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside a field annotation (`X`, `X | None`, `tuple[X, ...]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _model_in(arg)) is not None), None)


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key (allowed: {', '.join(allowed)}){hint}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_INPUT else text[: MAX_SHOWN_INPUT - 1] + "…"


__all__ = ["MAX_SHOWN_INPUT", "format_validation_error", "lax_number_errors"]
