"""One TOML config for every service, validated at start-up.

Each section is a dataclass whose fields carry a default and a line of
documentation (``setting(default, "doc")``). Each entry point hands
``load_config`` its own schema, built by ``rescoin.services.schema`` from
the section classes it reads, the other sections known by name only, so the
bus never imports the scheduler's numpy to read its config; without one, the
full schema (every section, as ``rescoin config check`` reads).
``deploy/rescoin.example.toml`` is generated from the full schema
(``rescoin config example``) and a test keeps the two equal. A misspelt
section refuses every service; a misspelt key refuses every service that
reads its section, naming the key (``rescoin config check`` checks them all).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Bad configuration: names the key and what is wrong with it."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"config key {key}: {reason}")


def setting(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """A config field: its default, one line of documentation, and an optional check.

    ``check(value)`` returns an error text, or None when the value is fine.
    """
    meta = {"doc": doc, "check": check}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def between(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}"

    return check


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


Schema = Mapping[str, type | None]
"""Section name -> its class, or None for a section this program accepts but does not read."""


class Config:
    """The validated config: one attribute per section it read (``cfg.monitor.uri``)."""

    def __init__(self, sections: Mapping[str, Any], source: str) -> None:
        self._sections = dict(sections)
        self.source = source
        for name, value in sections.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:  # sections are set in __init__; this tells type checkers so
        raise AttributeError(f"no config section {name!r} in this program's schema")

    def section(self, name: str) -> Any:
        return self._sections[name]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(sec) for name, sec in self._sections.items()}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(k, key_t) and _type_ok(v, val_t) for k, v in value.items())
    return False


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """Validate one section's values against its dataclass and build it."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _type_ok(value, hint):
            raise ConfigError(f"{name}.{key}", f"must be {_type_name(hint)}, got {value!r:.60}")
        kwargs[key] = value
    section = cls(**kwargs)
    for key, fld in fields.items():
        check = fld.metadata.get("check")
        problem = check(getattr(section, key)) if check else None
        if problem:
            raise ConfigError(f"{name}.{key}", f"{problem} (got {getattr(section, key)!r:.60})")
    return section


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value as a TOML value, or a bare string) -> parts."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(text, "an override looks like section.key=value")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    sections: Schema | None = None,
) -> Config:
    """Read ``path`` (None: all defaults), apply ``section.key=value`` overrides, validate.

    ``sections`` names every known section; those with a class are validated and built, the others
    only accepted. None: every section's class (``schema.full_schema``: imports every stage's settings)."""
    if sections is None:
        from ..schema import full_schema  # here, not above: this module sits below every service

        sections = full_schema()
    raw: dict[str, Any] = {}
    source = "defaults"
    if path:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError("(file)", f"{path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from exc
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(name, f"unknown section (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a [section] table")
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in sections:
            raise ConfigError(f"{section}.{key}", "unknown section")
        raw.setdefault(section, {})[key] = value
    built = {name: build_section(name, cls, raw.get(name, {})) for name, cls in sections.items() if cls is not None}
    return Config(built, source)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    return repr(value)


def example_toml(sections: Mapping[str, type]) -> str:
    """The annotated example config: every key, its default and its doc line."""
    lines = [
        "# ResCoin configuration: every key with its default and what it does.",
        "# Generated by `rescoin config example`; a test keeps it equal to the schema.",
        "# Every service reads the same file (--config FILE or $RESCOIN_CONFIG);",
        "# single keys can be overridden with --set section.key=value.",
    ]
    for name, cls in sections.items():
        lines += ["", f"[{name}]"]
        if cls.__doc__:
            lines += [f"# {line.strip()}" for line in cls.__doc__.strip().splitlines() if line.strip()]
        for fld in dataclasses.fields(cls):
            default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()  # type: ignore[misc,operator]
            lines.append(f"# {fld.metadata.get('doc', '')}")
            lines.append(f"{fld.name} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
