"""Config stack: `--base a.yaml b.yaml ...` merged with OmegaConf (later wins), then `key=value` overrides.

A config has top-level sections (`model:`, `args:`, ...). `model:` composes components with `target:`/`params:`
(built by `sgm.util.instantiate_from_config`); `args:` holds run settings, validated against a dataclass schema.
Every key is checked: an unknown key is an error naming the key and the file (or override) it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the key and where it was set."""


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _leaves(node: Any, prefix: str = "") -> Iterable[str]:
    """Dotted paths of a plain nested dict: every mapping node and every leaf."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _leaves(value, path)


@dataclass
class Config:
    """The merged config plus where every key came from."""

    data: dict
    origins: dict[str, str] = field(default_factory=dict)

    def where(self, path: str) -> str:
        """The file or override that set `path` (or its closest set ancestor)."""
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path.rpartition(".")[0]
        return "config"

    def section(self, name: str) -> dict:
        return self.data.get(name) or {}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; configs and overrides mean the number (YAML 1.2 does too)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _read_yaml(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = _load_yaml(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({type(data).__name__} found)")
    return data


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value (e.g. args.sampling_latent_frames=5)")
    key, _, value = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}': malformed key '{key}'")
    try:
        parsed = _load_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    node: Any = parsed
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def _check_interpolations(raw: Config, merged: DictConfig) -> None:
    """Every `${a.b}` (e.g. ${args.model_root}) names a key that is set: a null one would silently become "None"."""

    def strings(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from strings(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list):
            for value in node:
                yield from strings(value, prefix)
        elif isinstance(node, str):
            yield prefix, node

    for path, value in strings(raw.data, ""):
        for ref in re.findall(r"\$\{([\w.]+)\}", value):
            if OmegaConf.select(merged, ref, throw_on_resolution_failure=False) is None:
                raise ConfigError(
                    f"{raw.where(path)}: {path} uses ${{{ref}}}, which is not set ({ref}=... on the command line)"
                )


def load_config(
    base_files: list[str], overrides: list[str] = (), sections: Iterable[str] = ("model", "args")
) -> Config:
    """Merge YAML files (later wins), then `key=value` overrides, recording the origin of every key."""
    if not base_files:
        raise ConfigError("no config given: pass --base <model yaml> <run yaml> ...")
    sections = tuple(sections)
    merged = OmegaConf.create({})
    origins: dict[str, str] = {}
    layers = [(path, _read_yaml(path)) for path in base_files]
    layers += [(f"override '{item}'", _parse_override(item)) for item in overrides]
    for source, data in layers:
        for top in data:
            if top not in sections:
                raise ConfigError(
                    f"{source}: unknown top-level section '{top}' (expected one of {list(sections)}){_suggest(str(top), sections)}"
                )
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: cannot merge: {str(err).splitlines()[0]}") from None
        for path in _leaves(data):
            origins[path] = source
    _check_interpolations(Config(OmegaConf.to_container(merged, resolve=False), origins), merged)
    try:
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve the config: {str(err).splitlines()[0]}") from None
    return Config(plain, origins)


def parse_args(schema: type, config: Config, section: str = "args"):
    """Validate `config.section(section)` against the dataclass `schema`; return a schema instance.

    Unknown keys and values of the wrong type are errors naming the key and its origin. The schema may define
    `validate(self) -> None` for cross-field checks (raising ValueError with the key name in the message).
    """
    values = config.section(section)
    if not isinstance(values, dict):
        raise ConfigError(f"{config.where(section)}: '{section}:' must be a mapping")
    names = {f.name for f in dataclasses.fields(schema)}
    renamed = getattr(schema, "RENAMED_KEYS", {})  # old name -> new name, for a helpful error
    for key in values:
        if key in renamed:
            raise ConfigError(
                f"{config.where(f'{section}.{key}')}: '{section}.{key}' was renamed '{section}.{renamed[key]}'"
            )
        if key not in names:
            raise ConfigError(
                f"{config.where(f'{section}.{key}')}: unknown key '{section}.{key}'{_suggest(str(key), names)}"
            )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), values)
        instance = OmegaConf.to_object(typed)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{config.where(f'{section}.{key}')}: bad value for '{section}.{key}': {reason}") from None
    # Structured configs hand back OmegaConf lists for list fields; the rest of the code wants plain lists.
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, (ListConfig, DictConfig)):
            setattr(instance, f.name, OmegaConf.to_container(value))
    validate = getattr(instance, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as err:
            message = str(err)
            key = message.split(":", 1)[0].strip()
            raise ConfigError(f"{config.where(f'{section}.{key}')}: {section}.{message}") from None
    return instance
