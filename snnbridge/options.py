"""Typed plugin options.

Plugins declare their options through the ``snnbridge_add_options`` hook as a list of
:class:`Option`. The core uses the declarations to validate a recipe *before any work is
done* (unknown names, wrong types, out-of-range values), to fill in defaults, and to list
options in ``snnbridge plugins`` and in the documentation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError, did_you_mean

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


@dataclass(frozen=True)
class Option:
    """One declared option of a plugin.

    ``type`` is one of ``bool, int, float, str, list, dict``; an ``int`` is accepted where a
    ``float`` is declared (and converted), but a ``bool`` is never accepted as a number.
    ``choices`` restricts the value to a fixed set; ``check`` is an optional predicate with
    ``check_help`` describing the allowed range (e.g. ``"0 < percentile <= 100"``).
    ``default=None`` with ``nullable=True`` means "unset"; a required option has
    ``required=True`` and no default. ``keywords`` are strings accepted besides values of the
    type (e.g. ``("auto",)`` for an ``int`` the plugin can choose itself).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: Sequence[Any] | None = None
    check: Callable[[Any], bool] | None = field(default=None, compare=False)
    check_help: str = ""
    nullable: bool = False
    required: bool = False
    keywords: Sequence[str] = ()

    def type_name(self) -> str:
        """The declared type as shown in messages and listings (``"float or null"``)."""
        name = _TYPE_NAMES.get(self.type, getattr(self.type, "__name__", str(self.type)))
        return name + "".join(f" or {k!r}" for k in self.keywords) + (" or null" if self.nullable else "")

    def coerce(self, plugin: str, value: Any) -> Any:
        """Return ``value`` converted to the declared type, or raise :class:`OptionError`."""
        where = f"option {self.name!r} of plugin {plugin!r}"
        if isinstance(value, str) and value in self.keywords:
            return value
        if isinstance(value, str) and self.keywords and self.type is not str:
            raise OptionError(f"{where} must be a {self.type_name()}, got {value!r}."
                              + did_you_mean(value, list(self.keywords)))
        if value is None:
            if self.nullable:
                return None
            raise OptionError(f"{where} must be a {self.type_name()}, got null; give a value or leave it out "
                              f"to use the default {self.default!r}.")
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f"{where} must be a number (float), got {type(value).__name__} {value!r}.")
            value = float(value)
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise OptionError(f"{where} must be a whole number (int), got {type(value).__name__} {value!r}.")
        elif self.type is bool:
            if not isinstance(value, bool):
                raise OptionError(f"{where} must be true or false (bool), got {type(value).__name__} {value!r}.")
        elif self.type is list:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise OptionError(f"{where} must be a list, got {type(value).__name__} {value!r}.")
        elif not isinstance(value, self.type):
            raise OptionError(f"{where} must be a {self.type_name()}, got {type(value).__name__} {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{where} must be one of {list(self.choices)!r}, got {value!r}."
                              + did_you_mean(str(value), [str(c) for c in self.choices]))
        if self.check is not None and not self.check(value):
            raise OptionError(f"{where} is out of range: {value!r}; it must satisfy {self.check_help or 'its check'}.")
        return value


def resolve_options(plugin: str, declared: Sequence[Option], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``given`` against ``declared`` and return a complete dict with defaults filled in."""
    given = dict(given or {})
    if not isinstance(given, dict):
        raise OptionError(f"options of plugin {plugin!r} must be a mapping of name to value, got {given!r}.")
    by_name = {o.name: o for o in declared}
    unknown = [k for k in given if k not in by_name]
    if unknown:
        names = sorted(by_name)
        hint = did_you_mean(unknown[0], names)
        known = ", ".join(names) if names else "none (this plugin takes no options)"
        raise OptionError(f"plugin {plugin!r} has no option {unknown[0]!r}.{hint} Its options are: {known}.")
    out: dict[str, Any] = {}
    for name, opt in by_name.items():
        if name in given:
            out[name] = opt.coerce(plugin, given[name])
        elif opt.required:
            raise OptionError(f"plugin {plugin!r} needs option {name!r} ({opt.help or opt.type_name()}); "
                              f"add it to the recipe, e.g. {{{plugin!r}: {{{name!r}: ...}}}}.")
        else:
            out[name] = opt.default
    return out
