"""Typed configs: a config node (an OmegaConf DictConfig or a plain mapping) as a frozen dataclass, checked
on the way in, every error naming its key (``task.pooling: 'max' is not one of mean, turn_and_all``).

- ``plain(node, where)``: the node as a resolved plain dict; a missing mandatory value (``???``) or an
  interpolation that does not resolve is an error naming the key.
- ``build(cls, node, where)``: the dataclass ``cls`` from the node. Unknown keys and missing required keys
  (fields without a default) are errors; each value is checked against the field's annotation: ``bool``,
  ``int``, ``float``, ``str``, ``Any``, ``X | None``, unions, ``Literal[...]``, ``tuple[X, ...]``,
  ``dict[str, X]`` and nested dataclasses (a null nested node takes the nested defaults).
- ``one_of(where, key, value, allowed)`` and ``check_target(node, where)`` (a Hydra ``_target_`` node: the
  target imports and its arguments bind to its signature, nothing is called) for the ``check`` methods.

Used by ``training/tasks.py`` (the task group) and ``training/settings.py`` (model, data, trainer).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

T = TypeVar("T")
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class ConfigError(ValueError):
    """A bad config value; the message names the key."""


def plain(node: Any, where: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The mapping ``node`` as a resolved plain dict."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if isinstance(node, DictConfig):
        try:
            out = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as exc:
            raise error(f"{_relative(node, exc.full_key or '', where)}: missing mandatory value (???)") from None
        except InterpolationResolutionError as exc:
            raise error(f"{_relative(node, exc.full_key or '', where)}: {exc.msg}") from None
        return cast(dict[str, Any], out)  # a DictConfig becomes a dict
    if isinstance(node, Mapping):
        return dict(node)
    raise error(f"{where}: expected a mapping, got {node!r}")


def resolved(node: Any) -> dict[str, Any]:
    """A mapping node (DictConfig) as the resolved plain dict ``OmegaConf.to_container`` makes of it, typed as
    one; a ``???`` value stays the string ``"???"``."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(node, resolve=True)
    if not isinstance(out, dict):
        raise TypeError(f"expected a mapping config node, got {type(node).__name__}")
    return cast(dict[str, Any], out)


def _relative(node: Any, full_key: str, where: str) -> str:
    """``full_key`` (from the config's root) as a key under ``where`` (the name the caller gives ``node``)."""
    own = node._get_full_key(None)
    rest = full_key[len(own) :].lstrip(".") if own and full_key.startswith(own) else full_key
    return f"{where}.{rest}" if rest else where


def build(cls: type[T], node: Any, where: str, error: type[ConfigError] = ConfigError) -> T:
    """The frozen dataclass ``cls`` from the mapping ``node``; any bad key or value is an ``error`` naming it."""
    raw = plain(node, where, error)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    missing = [
        n
        for n, f in known.items()
        if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise error(f"{where}: missing key(s) {', '.join(missing)}")
    hints = get_type_hints(cls)
    return cls(**{k: convert(hints[k], v, f"{where}.{k}", error) for k, v in raw.items()})


def convert(kind: Any, value: Any, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """``value`` as the annotation ``kind`` says (see the module's docstring)."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if len(options) < len(args):
                return None
            raise error(f"{where}: required, got null")
        for option in options:
            try:
                return convert(option, value, where, error)
            except error:
                if len(options) == 1:
                    raise
        raise error(f"{where}: expected {type_name(kind)}, got {value!r}")
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return build(kind, {} if value is None else value, where, error)
    if kind is Any:
        return value
    if value is None:
        raise error(f"{where}: required, got null")
    if origin is Literal:
        one_of(where, "", value, args, error)
        return value
    if origin is tuple or origin is dict:
        return _container(origin, args, value, where, error)
    scalar = SCALARS.get(kind)
    if scalar is None:
        raise TypeError(f"{where}: typed_config does not convert {kind!r}")
    try:
        return scalar(value)
    except (TypeError, ValueError):
        raise error(f"{where}: expected {type_name(kind)}, got {value!r}") from None


def _container(origin: type, args: tuple, value: Any, where: str, error: type[ConfigError]) -> Any:
    if origin is tuple:
        expected = f"tuple[{_names(args)}]"
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected {expected}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value))
        if len(args) != len(value):
            raise error(f"{where}: expected {expected}, got {value!r}")
        return tuple(convert(a, v, f"{where}[{i}]", error) for i, (a, v) in enumerate(zip(args, value)))
    if not isinstance(value, Mapping):
        raise error(f"{where}: expected a mapping, got {value!r}")
    key_kind, value_kind = args or (str, Any)
    return {convert(key_kind, k, where, error): convert(value_kind, v, f"{where}.{k}", error) for k, v in value.items()}


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(value)
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


SCALARS: dict[Any, Callable[[Any], Any]] = {bool: _bool, int: _int, float: _float, str: _str}


def type_name(kind: Any) -> str:
    """``int``, ``tuple[str, ...]``, ``str | bool``: the annotation as an error message names it."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is not None:
        return f"{origin.__name__}[{_names(args)}]"
    return getattr(kind, "__name__", str(kind))


def _names(args: tuple) -> str:
    return ", ".join("..." if a is Ellipsis else type_name(a) for a in args)


def one_of(where: str, key: str, value: Any, allowed: Collection, error: type[ConfigError] = ConfigError) -> None:
    """``value`` (of ``where.key``; ``key`` may be empty) must be one of ``allowed``."""
    if value not in allowed:
        name = f"{where}.{key}" if key else where
        raise error(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")


def check_target(node: Mapping[str, Any], where: str, error: type[ConfigError] = ConfigError) -> Callable:
    """The callable a Hydra ``_target_`` node names, once its module imports and the node's other keys bind
    to its signature (an unknown argument, or a required one left out, is an error naming it). Not called."""
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise error(f"{where}._target_: expected a dotted name, got {target!r}")
    fn = _locate(target, f"{where}._target_", error)
    if not callable(fn):
        raise error(f"{where}._target_: {target} is not callable")
    kwargs = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return fn
    try:
        bound = signature.bind_partial(*node.get("_args_", ()), **kwargs)
    except TypeError:
        names = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = sorted(set(kwargs) - set(names))
        if not unknown:
            raise error(f"{where}._args_: {target} does not take these arguments: {node.get('_args_')!r}") from None
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; its arguments: {', '.join(names)}"
        raise error(f"{where}.{unknown[0]}: not an argument of {target}{hint}") from None
    if not node.get("_partial_"):
        needed = [
            n
            for n, p in signature.parameters.items()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in bound.arguments
        ]
        if needed:
            raise error(f"{where}: missing argument(s) {', '.join(needed)} of {target}")
    return fn


def _locate(dotted: str, where: str, error: type[ConfigError]) -> Any:
    """The object ``a.b.c`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name) and not exc.name.startswith(module_name):
                raise error(f"{where}: cannot import {dotted}: {exc}") from None  # a dependency is missing
            continue
        except Exception as exc:  # the module itself fails on import
            raise error(f"{where}: cannot import {dotted}: {type(exc).__name__}: {exc}") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise error(f"{where}: cannot import {dotted}: {module_name} has no attribute {attr}")
            obj = getattr(obj, attr)
        return obj
    raise error(f"{where}: cannot import {dotted}: no module {parts[0]}")
