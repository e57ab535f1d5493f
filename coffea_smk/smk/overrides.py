"""Snakemake's ``--config KEY=VALUE`` overrides, read the way Snakemake reads them.

So that what reads the outputs (the progress view, ``coffea-smk status``, ``clean``,
``report``) finds them where ``--config outdir=...`` put them. Snakemake itself is not
imported (it takes seconds); the parsing follows ``snakemake.cli.parse_config`` and the
merge ``snakemake.utils.update_config``, which ``tests/test_cluster_profiles.py`` holds
these against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from coffea_smk.spec.config import ConfigError, read_mapping

_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")
_OPTIONS = ("--config", "-C")


def _value(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    try:
        value = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text
    return text if value is None or callable(value) else value


def parse_entries(entries: Sequence[str]) -> dict[str, Any]:
    """``["outdir=elsewhere", "chunksize=5"]`` as Snakemake's config overrides.

    Raises:
        ConfigError: An entry is not ``KEY=VALUE`` with a valid key.
    """
    out: dict[str, Any] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"--config {entry}: config entries are KEY=VALUE, KEY a name")
        raw = raw.strip("'\"")
        merge(out, {key: None if raw == "" else _value(raw)})
    return out


def split_overrides(args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The arguments without their ``--config``/``-C`` entries, and those entries parsed (every
    argument after the option up to the next one that starts with ``-``, as Snakemake takes them).

    Raises:
        ConfigError: An entry is not ``KEY=VALUE``.
    """
    rest: list[str] = []
    entries: list[str] = []
    taking = False
    for arg in args:
        name, eq, value = arg.partition("=")
        if arg in _OPTIONS:
            taking = True
            continue
        if eq and name in _OPTIONS:  # --config=outdir=x
            taking = True
            entries.append(value)
            continue
        if taking and not arg.startswith("-"):
            entries.append(arg)
            continue
        taking = False
        rest.append(arg)
    return rest, parse_entries(entries)


def merge(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` updated in place by ``overrides``, nested mappings merged (as Snakemake does)."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            merge(config[key], value)
        else:
            config[key] = dict(value) if isinstance(value, Mapping) else value
    return config


def read_config(configfile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The analysis config of ``configfile`` with Snakemake's ``--config`` overrides applied.

    Raises:
        ConfigError: The file does not exist or holds no mapping.
    """
    path = Path(configfile)
    if not path.is_file():
        raise ConfigError(f"analysis config {configfile} does not exist")
    try:
        data = read_mapping(path)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{configfile} cannot be parsed: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{configfile}: an analysis config is a mapping of keys to values")
    return merge(data, overrides or {})
