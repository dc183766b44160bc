"""Configuration files: a :class:`CertifyConfig` or :class:`SampleConfig` as TOML.

The file is nested like the configuration's ``to_dict()``: top-level keys, then tables
``[sample]``, ``[sample.recipe]``, ``[barrier]``, ... (a SampleConfig's file has ``[recipe]``
and the rest at the top). A key left out takes its field's default. TOML has no null, so an
unset optional value (``pool_delta``, ``delta_hi``, ``memory_budget_mb``) is left out, and reads
back as unset. :func:`load_config` checks every key and type before building the configuration
(whose own checks then run), so a bad file is one :class:`ConfigFileError` naming the file and
the key; :func:`dump_config` writes a file that loads back to the identical configuration.
"""
from __future__ import annotations

import os
import sys
import typing
from typing import Any, Dict, Tuple, Type, TypeVar

from .config import CertifyConfig, ConfigError, SampleConfig, field_types, given_type, nested_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Config = TypeVar("Config", CertifyConfig, SampleConfig)

SCALARS: Dict[type, Tuple[Tuple[type, ...], str]] = {
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}
"""The TOML values each scalar field type accepts, and what the type is called in an error."""


class ConfigFileError(ConfigError):
    """A configuration file cannot be used; the message names the file and, when one key is at
    fault, that key (dotted: ``sample.recipe.lr``)."""

    def __init__(self, path: str, key: str, message: str):
        ValueError.__init__(self, f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.field = key
        self.message = message
        self.path = path


def load_config(path: str | os.PathLike, kind: Type[Config] = CertifyConfig) -> Config:
    """The configuration of type ``kind`` (CertifyConfig or SampleConfig) in the TOML file at
    ``path``; any problem with the file is a :class:`ConfigFileError`."""
    name = os.fspath(path)
    try:
        return kind.from_dict(read_settings(name, kind))
    except ConfigError as exc:  # a value out of range, or settings that contradict each other
        raise in_file(name, exc) from None


def read_settings(path: str | os.PathLike, kind: Type[Config] = CertifyConfig) -> Dict[str, Any]:
    """The settings in the TOML file at ``path``, nested like ``kind.to_dict()`` and checked key
    by key (known keys, right types), but not yet built into a ``kind``: the command line adds
    its options to them first."""
    name = os.fspath(path)
    return check_table(kind, read_toml(name), name, ())


def in_file(path: str, exc: ConfigError) -> ConfigFileError:
    """The configuration error ``exc`` of the settings read from ``path``, naming the file."""
    return ConfigFileError(path, exc.field, exc.message)


def dump_config(config: CertifyConfig | SampleConfig) -> str:
    """``config`` as TOML text that :func:`load_config` reads back to an identical configuration."""
    table = config.to_dict()
    if isinstance(config, CertifyConfig):
        del table["barrier"]["kappa"]  # always the certification's kappa, which fills it on loading
    unset = sorted(unset_keys(table))
    command = "certify" if isinstance(config, CertifyConfig) else "sample"
    header = [f"# barrierkit {type(config).__name__}: read it with `barrierkit {command} --config FILE`."]
    if unset:
        header.append(f"# Left out because unset (automatic): {', '.join(unset)}.")
    import tomli_w  # only writing needs it

    return "\n".join(header) + "\n\n" + tomli_w.dumps(without_unset(table))


def read_toml(path: str) -> Dict[str, Any]:
    """The parsed TOML document at ``path``; unreadable files and bad syntax (with its line) are
    a :class:`ConfigFileError`."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, "", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, "", "not a TOML file (binary, not UTF-8 text)") from None
    except RecursionError:
        raise ConfigFileError(path, "", "invalid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigFileError(path, "", f"cannot read: {exc.strerror or exc}") from None


def check_table(cls: type, table: Dict[str, Any], path: str, where: Tuple[str, ...]) -> Dict[str, Any]:
    """The entries of ``table`` (the table ``where`` of the file ``path``) checked against the
    fields of the configuration dataclass ``cls``: known keys only, each of its field's type."""
    kinds = field_types(cls)
    checked: Dict[str, Any] = {}
    for key, value in table.items():
        dotted = ".".join((*where, key))
        if key not in kinds:
            raise ConfigFileError(path, dotted, f"unknown key in {table_name(where)} (known: {', '.join(kinds)})")
        sub = nested_config(kinds[key])
        if sub is None:
            checked[key] = check_value(kinds[key], value, path, dotted)
        elif isinstance(value, dict):
            checked[key] = check_table(sub, value, path, (*where, key))
        else:
            raise ConfigFileError(path, dotted, f"must be a table [{dotted}], got {toml_type(value)}")
    return checked


def check_value(kind: Any, value: Any, path: str, key: str) -> Any:
    """``value`` as a value of the field type ``kind``: int, float (an integer is accepted),
    str, an optional one of them (given, so not None), or a tuple of them (a TOML array)."""
    kind = given_type(kind)
    if typing.get_origin(kind) is tuple:
        return check_array(kind, value, path, key)
    accepted, noun = SCALARS[kind]
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise ConfigFileError(path, key, f"must be {noun}, got {toml_type(value)} {value!r}")
    return float(value) if kind is float else value


def check_array(kind: Any, value: Any, path: str, key: str) -> Tuple[Any, ...]:
    """``value`` as the tuple type ``kind``: ``Tuple[int, ...]`` (any length) or a fixed
    ``Tuple[float, float]``."""
    items = typing.get_args(kind)
    if not isinstance(value, list):
        raise ConfigFileError(path, key, f"must be an array, got {toml_type(value)} {value!r}")
    if items[-1] is Ellipsis:
        items = items[:1] * len(value)
    elif len(items) != len(value):
        raise ConfigFileError(path, key, f"must be an array of {len(items)} values, got {len(value)}")
    return tuple(check_value(item, v, path, f"{key}[{i}]") for i, (item, v) in enumerate(zip(items, value)))


def table_name(where: Tuple[str, ...]) -> str:
    """How an error names a table: ``table [sample.recipe]`` or ``the top-level table``."""
    return f"table [{'.'.join(where)}]" if where else "the top-level table"


def toml_type(value: Any) -> str:
    """What a parsed TOML value is called in an error."""
    names = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    return next((name for kind, name in names if isinstance(value, kind)), "a date or time")


def unset_keys(table: Dict[str, Any], where: Tuple[str, ...] = ()) -> list:
    """The dotted keys of ``table`` whose value is None."""
    found = []
    for key, value in table.items():
        if isinstance(value, dict):
            found += unset_keys(value, (*where, key))
        elif value is None:
            found.append(".".join((*where, key)))
    return found


def without_unset(table: Dict[str, Any]) -> Dict[str, Any]:
    """``table`` without its None values (TOML has no null), nested tables included."""
    return {key: without_unset(value) if isinstance(value, dict) else value
            for key, value in table.items() if value is not None}
