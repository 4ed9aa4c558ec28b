"""Registries: the one list of names of each kind of plug-in (MoE families, scorers, groupers, scalings).

`Registry` maps a name to an entry: a name registered twice is an error, and an unknown name raises
the kind's error listing the known ones. `MethodRegistry` adds what the plan methods share: each
method declares its options as a small frozen pydantic model (a `MethodOptions` subclass; the base
class for a method without options), and `MethodRegistry.choice` is the PlanConfig field type that
reads a choice written as

    do_acp                                      the name alone: every option at its default
    {name: do_acp, exhaustive_limit: 500}       the name and some of its options

into the method's options model. The registry is read when a value is validated and when a JSON
schema is made, so a method registered later (a plug-in, a test) is accepted and listed without
editing PlanConfig, the recipe schema, the sweep grid or the CLI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Name → entry for one kind; `field` and `kind` word its error (`scoring: unknown scorer 'x'; known: …`)."""

    def __init__(self, field: str, kind: str, error: type[Exception]) -> None:
        self.field, self.kind, self.error = field, kind, error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`; ValueError if the name is taken."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered under `name`; the kind's error listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise self.error(f"{self.field}: unknown {self.kind} {name!r}; known: {known}") from None

    def entries(self) -> list[T]:
        """Every entry, in name order."""
        return [self._entries[name] for name in self.names()]


class MethodOptions(BaseModel):
    """A chosen method and its options: `name` is the registered method, every other field an option.

    Strict: a boolean is not a number and a float must be finite, so a recipe value is never silently
    converted; fields are documented by their attribute docstrings (shown in the JSON schema).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    name: str

    def __str__(self) -> str:
        """The choice as a user reads it: `do_acp`, or `uniform(router_mass=True)` with the options that
        differ from their defaults."""
        changed = self.model_dump(exclude={"name"}, exclude_defaults=True)
        return self.name + (f"({', '.join(f'{k}={v!r}' for k, v in changed.items())})" if changed else "")


@dataclass(frozen=True)
class Method:
    """A registered method: `fn` takes the kind's arguments and then the chosen options (an `options`)."""

    name: str
    fn: Callable[..., Any]
    options: type[MethodOptions]

    def defaults(self) -> MethodOptions:
        """The method with every option at its default."""
        return self.options(name=self.name)


M = TypeVar("M", bound=Method)


class MethodRegistry(Registry[M]):
    """The methods of one kind; `entry` is the kind's Method subclass (its call signature and traits)."""

    def __init__(self, field: str, kind: str, error: type[Exception], entry: type[M]) -> None:
        super().__init__(field, kind, error)
        self.entry = entry

    def register(
        self, name: str, options: type[MethodOptions] = MethodOptions, **traits: Any
    ) -> Callable[[F], F]:
        """Decorator: register `fn` under `name` with its options model and the kind's traits."""

        def register(fn: F) -> F:
            self.add(name, self.entry(name=name, fn=fn, options=options, **traits))
            return fn

        return register

    @property
    def choice(self) -> Any:
        """The pydantic field type of a choice of this kind (see the module docstring)."""
        return Annotated[MethodOptions, self]

    def choose(self, value: object) -> MethodOptions:
        """A name, a mapping {name, **options} or a MethodOptions as the method's options model.

        A pydantic ValidationError otherwise, located at the bad key and of pydantic's own error types
        (a name not registered is a `literal_error`, an unknown option a `value_error` listing the
        allowed keys), so callers can re-raise it with other errors.
        """
        if isinstance(value, MethodOptions):
            if value.name in self._entries and type(value) is self._entries[value.name].options:
                return value
            value = value.model_dump()
        data = {"name": value} if isinstance(value, str) else value
        if not isinstance(data, dict):
            raise ValueError(f"Input should be a {self.kind} name or a mapping with its `name` and options")
        if "name" not in data:
            raise _errors([InitErrorDetails(type="missing", loc=("name",), input=data)])
        name = data["name"]
        if not isinstance(name, str) or name not in self._entries:
            loc = () if isinstance(value, str) else ("name",)
            expected = {"expected": self._one_of()}
            raise _errors([InitErrorDetails(type="literal_error", loc=loc, input=name, ctx=expected)])
        model = self._entries[name].options
        try:
            return model.model_validate(data)
        except ValidationError as error:
            allowed = ", ".join(model.model_fields)
            unknown_key = {"type": "value_error", "ctx": {"error": f"unknown key (allowed: {allowed})"}}
            raise _errors(
                [
                    {**item, **unknown_key} if item["type"] == "extra_forbidden" else item
                    for item in error.errors()
                ]
            ) from None

    def _one_of(self) -> str:
        """The registered names the way pydantic words a choice: `'a', 'b' or 'c'`."""
        *rest, last = [repr(name) for name in self.names()]
        return f"{', '.join(rest)} or {last}" if rest else last

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.choose,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value, info: value.model_dump(mode=info.mode), info_arg=True
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        """anyOf: a registered name, or per method an object with `name` fixed and its options."""
        names = {"type": "string", "enum": self.names(), "title": f"{self.kind} name"}
        return {"anyOf": [names, *(self._object_schema(method, handler) for method in self.entries())]}

    @staticmethod
    def _object_schema(method: Method, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        variant = copy.deepcopy(handler.resolve_ref_schema(handler(method.options.__pydantic_core_schema__)))
        variant["title"] = method.name
        variant.pop("description", None)  # the options model's docstring; the fields keep theirs
        variant["properties"]["name"] = {"const": method.name, "type": "string"}
        return variant


def _errors(items: list[Any]) -> ValidationError:
    return ValidationError.from_exception_data("MethodOptions", items)
