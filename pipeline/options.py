"""The sweep file's ``train:`` section, built from the engine's own option declarations.

``TrainSection`` has one field per option of ``rnncore.config.TrainConfig``, with its declared type and
default. Each option is a fixed value, coerced to that type, or a search domain (``pipeline.space.Domain``)
whose every value the engine accepts; the engine's rules (``check_value``) judge both, so each rule is
declared once, in rnncore. ``Section`` is the base of every model of the sweep file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, InstanceOf, ValidationError, create_model
from pydantic_core import PydanticCustomError

from rnncore.config import FIELD_NAMES, FIELD_TYPES, OptionError, TrainConfig, check_value, coerce

from .space import FLOAT_KINDS, INT_COUNTERPART, Domain, DomainError, number_hint, show

__all__ = ["TrainSection"]

Inner = tuple[tuple[str, ...], str]  # (place inside the value checked, "rule, but got value; fix")


class Section(BaseModel):
    """A section of the sweep file: unknown keys are errors, values are not converted between types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def invalid(problems: Sequence[Inner], value: Any) -> ValidationError:
    """Problems found inside one value, as pydantic's error; each ``(place, text)`` extends the value's own key."""
    return ValidationError.from_exception_data("sweep", [
        {"type": PydanticCustomError("sweep", "{text}", {"text": text}), "loc": place, "input": value}
        for place, text in problems])


def _checked(name: str, value: Any) -> tuple[Any, str | None]:
    """The engine's verdict on one value of option ``name``: the value coerced to the option's type, or its rule
    without the option's name in front."""
    try:
        value = coerce(name, value)
    except OptionError as e:
        kind = {int: "a whole number", float: "a number", str: "a string"}[FIELD_TYPES[name]]
        fix = number_hint(value) or f"write {kind} such as {getattr(TrainConfig, name)!r} (the default)"
        return None, f"{e.rule}; {fix}"
    try:
        check_value(name, value)
    except OptionError as e:
        return None, e.rule
    return value, None


def option(name: str, value: Any) -> tuple[Any, list[Inner]]:
    """Option ``name`` as the engine takes it: a fixed value (coerced to its type) or a Domain whose every value
    the engine accepts; else the problems, each under its place in the value (a domain's search key)."""
    if not isinstance(value, (Mapping, Domain)):
        value, problem = _checked(name, value)
        return (None, [((), problem)]) if problem else (value, [])
    try:
        domain = value if isinstance(value, Domain) else Domain.parse(value)
    except DomainError as e:
        return None, [((str(e.key),) if e.key else (), p) for p in e.problems]
    where, ftype = (domain.kind,), FIELD_TYPES[name]
    if ftype is str and not domain.is_categorical:
        return None, [(where, f"{name} is a text option, so it can only be fixed or searched with grid_search or "
                              f"choice, but got {domain.kind}; list the values, e.g. {{choice: [...]}}")]
    if ftype is int and domain.kind in FLOAT_KINDS:
        return None, [(where, f"{name} is an integer option, but {domain.kind} draws floats; "
                              f"use {INT_COUNTERPART[domain.kind]} instead")]
    labelled = ([(f"value {i}", v) for i, v in enumerate(domain.args)] if domain.is_categorical
                else list(zip(("smallest value", "largest value"), domain.extremes())))
    checked = [(label, *_checked(name, v)) for label, v in labelled]
    problems = [(where, f"{label} {p}") for label, _, p in checked if p]
    if problems:
        return None, problems
    if domain.is_categorical:
        domain = Domain(domain.kind, tuple(v for _, v, _ in checked))
    return domain, []


def _option_type(name: str) -> Any:
    """The type of option ``name`` under train: its declared type, fixed, or a search domain over it."""

    def check(value: Any) -> Any:
        checked, problems = option(name, value)
        if problems:
            raise invalid(problems, value)
        return checked

    return Annotated[Union[FIELD_TYPES[name], InstanceOf[Domain]], BeforeValidator(check)]


TrainSection: type[Section] = create_model(
    "TrainSection", __base__=Section, __doc__="``train:`` every rnncore option, each fixed or searched.",
    **{name: (_option_type(name), getattr(TrainConfig, name)) for name in FIELD_NAMES})


def _train(value: Any) -> dict[str, Any]:
    """The options ``train:`` sets, in the file's order, each checked by TrainSection."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of rnncore options, but got {show(value)}; "
                         "write one option per line, e.g. hidden_size: 128")
    section = TrainSection.model_validate(value)
    return {name: getattr(section, name) for name in value}


# SweepConfig.train: the options the file sets, in its order, each a fixed value or a Domain
TrainOptions = Annotated[dict[str, Any], BeforeValidator(_train)]


def value_range(train: Mapping[str, Any], name: str) -> tuple[Any, Any]:
    """The smallest and largest value option ``name`` takes under ``train`` (its default if unset)."""
    value = train.get(name, getattr(TrainConfig, name))
    return value.extremes() if isinstance(value, Domain) else (value, value)
