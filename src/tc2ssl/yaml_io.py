"""Reading YAML files a user hands to tc2ssl (presets, a run folder's ``config.yaml``) as one plain mapping.

The loader is PyYAML's safe loader (no ``!!python`` tags: they are refused, never constructed) with duplicate keys
refused as well, since the silent "last one wins" of plain YAML would hide a typo. Every problem with the file
(missing, unreadable, not UTF-8, malformed, empty, not a mapping) is a :class:`ConfigError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from tc2ssl.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping in the YAML file ``path``; ``what`` names the file's role in error messages."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {_first_line(exc)}") from None
    if data is None:
        raise ConfigError(f"{what} {path} is empty; it must hold a mapping of config keys (e.g. `train: {{epochs: 5}}`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of config keys, got a {type(data).__name__}")
    return data
