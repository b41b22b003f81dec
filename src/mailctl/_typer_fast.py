"""Plain str/int/float/list[str] options without pydantic.

Typer 0.29+ coerces every non-flag parameter, even an option that was not given, through a
pydantic TypeAdapter. Importing pydantic and building the first adapter costs ~90 ms, more
than all of mailctl's own start-up, on every command (`mailctl profile list` included, whose
global options --config and --profile are plain strings).

For the annotations mailctl uses, the conversion is trivial, so we do it here: str, bool
flags, int, float (with min/max, no clamp) and list[str]. Anything else (Enum, Literal, Path, datetime,
custom parsers, bytes or odd values) goes to Typer's own pydantic path, built on first use.
The hook relies on Typer internals (`typer.core._TyperParameter.get_runtime_param`,
`typer._coercion.RuntimeParam`); when they are missing (Click-based Typer releases, or a
future rename) install() does nothing and Typer behaves as shipped, only slower.

Every use of those internals is guarded: an exception while defining the class (a new field on
`RuntimeParam`), while building a fast parameter (`_plain()`) or inside the fast conversion
turns the hook off for the rest of the process and hands the parameter to Typer's own path, so a
changed Typer costs speed, never a command (MAILCTL_DEBUG=1 prints one note on stderr).
tests/test_cli_params.py pins the behaviour either way; tests/test_typer_fallback.py simulates
changed internals.
"""

from __future__ import annotations

import math

import os
import sys
from dataclasses import dataclass
from typing import Any, get_args, get_origin

_INSTALLED = False  # the hook is in place
_ACTIVE = True  # cleared on the first failure: from then on Typer's own path only
_SLOW = object()  # "let Typer convert this value"


def install() -> bool:
    """Hook the fast path into Typer; True if it is active. Never raises."""
    global _INSTALLED
    if _INSTALLED:
        return _ACTIVE
    if not _ACTIVE:
        return False
    try:
        _install()
    except Exception as exc:  # Typer internals changed: Typer's own path, only slower
        _give_up("defining the fast parameter class", exc)
        return False
    return _INSTALLED


def _give_up(step: str, exc: BaseException) -> None:
    """Turn the fast path off for this process (a note on stderr under MAILCTL_DEBUG=1)."""
    global _ACTIVE
    if _ACTIVE and os.environ.get("MAILCTL_DEBUG", "") not in ("", "0"):
        sys.stderr.write(f"mailctl: debug: Typer internals changed ({step}: {type(exc).__name__}: {exc}); "
                         "options go through Typer's own conversion\n")
    _ACTIVE = False


def _install() -> None:
    global _INSTALLED
    try:
        from typer import _coercion
        from typer._click.exceptions import BadParameter
        from typer.core import _TyperParameter
    except ImportError:
        return
    original = getattr(_TyperParameter, "get_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    if original is None or base is None or build is None:
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(base):  # type: ignore[misc, valid-type]
        kind: type
        many: bool
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if _ACTIVE:
                try:
                    result = self._fast(value, param, ctx)
                except BadParameter:
                    raise
                except Exception as exc:  # an internal we read is not what it was
                    _give_up("converting an option value", exc)
                    result = _SLOW
                if result is not _SLOW:
                    return result
            return build(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

        def _fast(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.many:
                if not isinstance(value, (list, tuple)):
                    value = [value]
                if all(isinstance(v, str) for v in value):
                    return list(value)
                return _SLOW
            if self.kind is str:
                return value if isinstance(value, str) else _SLOW
            if self.kind is bool:  # flags arrive as bools; strings (from envvars) go the slow way
                return value if isinstance(value, bool) else _SLOW
            if isinstance(value, bool):
                return _SLOW
            if isinstance(value, self.kind) or (self.kind is float and isinstance(value, int)):
                number = self.kind(value)
            elif isinstance(value, str):
                try:
                    number = self.kind(value.strip())
                except ValueError:
                    noun = "an integer" if self.kind is int else "a number"
                    raise BadParameter(f"{value!r} is not {noun}.", ctx=ctx, param=param) from None
            else:
                return _SLOW
            if self.kind is float and not math.isfinite(number):  # inf, nan: never a usable value
                raise BadParameter(f"{value!r} is not a finite number.", ctx=ctx, param=param)
            lo, hi = self.parameter_info.min, self.parameter_info.max
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "",
                                                  f"<= {hi}" if hi is not None else "") if b)
                raise BadParameter(f"{value} is out of range: it must be {bounds}.", ctx=ctx, param=param)
            return number

    def get_runtime_param(self: Any) -> Any:
        if _ACTIVE:
            try:
                if getattr(self, "_runtime_param", None) is None:
                    fast = _plain(self, PlainRuntimeParam)
                    if fast is not None:
                        self._runtime_param = fast
            except Exception as exc:  # e.g. a new required RuntimeParam field: Typer builds it
                _give_up("building a fast parameter", exc)
        return original(self)

    _TyperParameter.get_runtime_param = get_runtime_param
    _INSTALLED = True


def _plain(param: Any, cls: type) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(descriptor, "file_annotation", None) is not None:
        return None
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", False):
        return None
    annotation = descriptor.annotation
    many = False
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
        many = True
        if annotation is not str:
            return None
    if annotation not in (str, int, float, bool):
        return None
    if annotation in (str, bool) and (getattr(info, "min", None) is not None or getattr(info, "max", None) is not None):
        return None
    return cls(parameter_info=info, annotation=descriptor.annotation, kind=annotation, many=many, descriptor=descriptor)
