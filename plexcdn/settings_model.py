"""The model every mapping of stack settings derives from, and the problems pydantic reports turned into the
program's own lines.

A `Settings` model is frozen, refuses unknown keys and reads camelCase keys (the attributes are snake_case).
Its fields carry their kinds (plexcdn.setting_kinds); rules between fields are methods marked `@rule`, which
yield Problems. Validation runs the fields and then the rules; when some fields are wrong, the rules are run
over a partial model of the fields that are right, and a rule that reads a wrong field is skipped, so that one
run reports every problem, not the first model's.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from plexcdn.setting_kinds import PLAIN_KEY, Kind, ListOf, Loc, Missing, Problem, one_of, shown

_Method = TypeVar("_Method", bound=Callable[..., Iterator[Problem]])


def rule(method: _Method) -> _Method:
    """Marks a model method that yields the problems of a rule between its settings."""
    method._is_rule = True  # type: ignore[attr-defined]
    return method


class Settings(BaseModel):
    """A mapping of settings: frozen, unknown keys refused, keys camelCase in the stack file."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        hide_input_in_errors=True,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _validate_whole(cls, data: Any, handler: Callable[[Any], Self], info: ValidationInfo) -> Self:
        try:
            model = handler(data)
        except ValidationError as error:
            if not isinstance(data, Mapping):
                raise
            problems = cls._partial(data)._rule_problems(tolerant=True)
            if not problems:
                raise
            raise _with_problems(cls.__name__, error, problems) from None
        problems = model._rule_problems(tolerant=False)
        if problems:
            raise _with_problems(cls.__name__, None, problems)
        return model._completed(info)

    def _completed(self, info: ValidationInfo) -> Self:
        """The model with the defaults that depend on other settings filled in."""
        return self

    @classmethod
    def _partial(cls, data: Mapping[Any, Any]) -> Settings:
        """A model of the fields that are valid on their own, for the rules that need only those: a rule that
        reads a field left out here raises AttributeError and is skipped. A mapping or list of mappings that is
        wrong somewhere inside becomes a partial model too, so that a rule between, say, a POP's upstream and
        the other POPs' names still runs when one POP's size is wrong."""
        values: dict[str, Any] = {}
        given: set[str] = set()
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in data:
                given.add(name)
                salvaged = _salvage(cls, name, data[key])
                if salvaged is not _INVALID:
                    values[name] = salvaged
            elif not field.is_required():
                values[name] = field.get_default(call_default_factory=True, validated_data=values)
        partial = cls.model_construct(_fields_set=given, **values)
        for name in cls.model_fields:
            if name not in values:
                partial.__dict__.pop(name, None)
        return partial

    def _rule_problems(self, tolerant: bool) -> list[Problem]:
        """Every rule's problems. Over a partial model (`tolerant`), a rule that reads a field left out, or
        trips over a value another rule would refuse (a region not in its provider's table), says nothing."""
        problems: list[Problem] = []
        for method in _rules_of(type(self)):
            try:
                problems.extend(method(self))
            except (AttributeError, LookupError, TypeError, ValueError):
                if not tolerant:
                    raise
        return problems

    @classmethod
    def loc(cls, *path: str | int) -> Loc:
        """A setting's place as the stack file spells it, from attribute names: loc("agent", "listen_port")."""
        place: list[str | int] = []
        current: Any = cls
        for part in path:
            if isinstance(part, int):
                place.append(part)
                continue
            field = current.model_fields[part]
            place.append(field.alias or part)
            current = model_in(field.annotation)
        return tuple(place)

    def given(self, name: str) -> bool:
        return name in self.model_fields_set

    @classmethod
    def refused_fields(cls) -> tuple[str, ...]:
        """Fields a rule always refuses in this model (a library seeder's viewer-only keys): not offered as
        valid keys in messages."""
        return ()


@cache
def _rules_of(cls: type[Settings]) -> tuple[Callable[[Settings], Iterator[Problem]], ...]:
    found: dict[str, Callable[[Settings], Iterator[Problem]]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if getattr(value, "_is_rule", False):
                found[name] = value
    return tuple(found.values())


_INVALID: Final = object()


def _salvage(cls: type[Settings], name: str, value: object) -> object:
    """A field's value if valid, else what a partial model can keep of it, else _INVALID."""
    try:
        return _field_adapter(cls, name).validate_python(value)
    except ValidationError:
        pass
    annotation = cls.model_fields[name].annotation
    model = model_in(annotation)
    if model is None:
        return _INVALID
    if not _is_list(annotation):
        return model._partial(value) if isinstance(value, Mapping) else _INVALID
    if not isinstance(value, list | tuple) or not value or not all(isinstance(item, Mapping) for item in value):
        return _INVALID
    items = []
    for item in value:
        try:
            items.append(model.model_validate(item))
        except ValidationError:
            items.append(model._partial(item))
    return tuple(items)


def _is_list(annotation: Any) -> bool:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) is tuple


@cache
def _field_adapter(cls: type[Settings], name: str) -> TypeAdapter[Any]:
    field = cls.model_fields[name]
    annotation: Any = field.annotation
    return TypeAdapter(Annotated[annotation, *field.metadata] if field.metadata else annotation)


def _with_problems(title: str, error: ValidationError | None, problems: Sequence[Problem]) -> ValidationError:
    """The field errors pydantic found, then the rules' problems, as one error: each keeps its type and message
    (a custom error of the same type carries the message without pydantic's context)."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(found["type"], found["msg"]), "loc": found["loc"], "input": found.get("input")}
        for found in (error.errors(include_url=False) if error is not None else ())
    ]
    details.extend(
        {"type": PydanticCustomError("setting", problem.message), "loc": problem.loc, "input": None}
        for problem in problems
    )
    return ValidationError.from_exception_data(title, details, hide_input=True)


def model_in(annotation: Any) -> Any:
    """The model or tuple type inside Optional and Annotated, else None."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return None
            annotation = options[0]
        elif origin is tuple:
            return model_in(typing.get_args(annotation)[0])
        elif isinstance(annotation, type) and issubclass(annotation, Settings):
            return annotation
        else:
            return None


def setting_at(root: type[Settings], loc: Loc) -> tuple[type[Settings] | None, FieldInfo | None]:
    """The model a setting sits in and the setting's field (None for an unknown key), from its place."""
    names = [part for part in loc if isinstance(part, str)]
    current: type[Settings] | None = root
    field: FieldInfo | None = None
    for position, name in enumerate(names):
        if current is None:
            return None, None
        by_alias = {(info.alias or attribute): info for attribute, info in current.model_fields.items()}
        field = by_alias.get(name)
        if field is None:
            return (current, None) if position == len(names) - 1 else (None, None)
        if position < len(names) - 1:
            current = model_in(field.annotation)
    return current, field


# --- problems as the user reads them ---------------------------------------------------------------------------


def path_text(loc: Loc) -> str:
    """pops, 1, region -> pops[1].region; a key that is no plain name (empty, spaced, very long) in brackets,
    quoted short: acme['']"""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not PLAIN_KEY.fullmatch(part):
            text += f"[{shown(part)}]"
        else:
            text += f".{part}" if text else part
    return text


def keys_of(model: type[Settings]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items() if name not in model.refused_fields()]


def _message(root: type[Settings], found: Mapping[str, Any]) -> str:
    loc: Loc = tuple(found["loc"])
    kind = found["type"]
    if kind == "setting":
        return str(found["msg"])
    parent, field = setting_at(root, loc)
    if kind == "missing":
        return _missing_message(field)
    if kind == "extra_forbidden" and parent is not None:
        return f"unknown setting; valid settings here: {', '.join(keys_of(parent))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        inner = model_in(field.annotation) if field is not None else None
        keys = f" ({one_of(keys_of(inner))})" if inner is not None else ""
        return f"must be a mapping of settings{keys}, got {shown(found.get('input'))}"
    return f"{found['msg']}"


def _missing_message(field: FieldInfo | None) -> str:
    for meta in field.metadata if field is not None else ():
        if isinstance(meta, Missing):
            return meta.message
        if isinstance(meta, ListOf):
            return f"must be {meta.must}"
        if isinstance(meta, Kind) and meta.must:
            return f"is required: {meta.must}"
    inner = model_in(field.annotation) if field is not None else None
    if inner is not None:
        required = [field.alias or name for name, field in inner.model_fields.items() if field.is_required()]
        return f"is required ({', '.join(required)})"
    return "is required"


def problem_lines(root: type[Settings], error: ValidationError, top: str) -> list[str]:
    """One line per problem, `setting.path[i]: what is wrong and what would be valid`, in the order of the
    root's sections (unknown keys last); `top` names the whole."""
    order = {key: index for index, key in enumerate(keys_of(root))}
    lines: list[tuple[int, str]] = []
    for found in error.errors(include_url=False, include_input=True):
        loc = tuple(found["loc"])
        section = order.get(str(loc[0]), len(order)) if loc else -1
        lines.append((section, f"{path_text(loc) or top}: {_message(root, found)}"))
    return [line for _, line in sorted(lines, key=lambda item: item[0])]
