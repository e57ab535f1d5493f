"""Snakemake logger plugin ``coffea-smk``: the live progress view of a coffea_smk run.

Selected by ``coffea-smk run``, by the shipped profiles (``logger: coffea-smk``) and by
``snakemake --logger coffea-smk``. Glue only: the view is
:mod:`coffea_smk.smk.progress_display`. With Snakemake's ``--verbose``,
``--printshellcmds``, ``--debug-dag``, a dry run, a command that runs no workflow
(``--list-rules``, ``--unlock``, ``--lint`` ...) or ``COFFEA_SMK_PROGRESS=off`` it prints
Snakemake's own log unchanged, as without the plugin.

The view finds the analysis from the config files Snakemake reports when the workflow
starts, and the ``--config KEY=VALUE`` overrides of this Snakemake's command line: they
reach it as one more config file (written to a temporary folder), so that the view and its
log follow ``--config outdir=...``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    """Settings of the view (``--logger-coffea-smk-<name>``)."""

    interval: float = field(
        default=15.0,
        metadata={
            "help": "Seconds between two progress lines when the output is not a terminal (default 15).",
            "type": float,
        },
    )


class LogHandler(LogHandlerBase):
    """Forwards Snakemake's log records to the progress view, or to Snakemake's own printer."""

    def __post_init__(self) -> None:
        from snakemake.logging import ColorizingTextHandler, DefaultFilter, DefaultFormatter

        s = self.common_settings
        quiet = s.quiet if s.quiet is not None else set()
        log_filter = DefaultFilter(quiet, s.debug_dag, s.verbose, s.dryrun, s.printshellcmds)
        formatter = DefaultFormatter(quiet, s.show_failed_logs)
        self._raw: logging.Handler | None = None
        self._view: Any = None
        self._started = False
        self._held: list[str] = []
        self._tmp: str | None = None
        from coffea_smk.smk.runargs import wants_raw_log

        # the command line's other options: `--logger ...` chose this plugin, and is no reason for the raw log
        others = [a for a in sys.argv[1:] if not a.startswith("--logger")]
        if s.verbose or s.printshellcmds or s.debug_dag or s.dryrun or wants_raw_log(others):
            self._raw = ColorizingTextHandler(nocolor=s.nocolor, formatter=formatter, filter=log_filter)
            return

        def format_record(record: logging.LogRecord) -> str | None:
            text = formatter.format(record) if log_filter.filter(record) else None
            if text and not self._started and record.levelno < logging.WARNING:
                self._held.append(text)  # shown at close if no workflow ever starts
            return text

        from coffea_smk.smk.progress_display import ProgressLog

        settings = self.settings if isinstance(self.settings, LogHandlerSettings) else LogHandlerSettings()
        self._view = ProgressLog(format_record, interval=settings.interval)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._raw is not None:
                self._raw.handle(record)
                return
            if str(getattr(record, "event", "") or "") == "workflow_started" and not self._started:
                self._started = True
                record = self._with_overrides(record)
            self._view.handle(record)
        except Exception:
            self.handleError(record)

    def _with_overrides(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record with one more config file: this command line's ``--config`` overrides."""
        from coffea_smk.smk.overrides import merge, read_config, split_overrides
        from coffea_smk.spec.config import ConfigError

        configfiles = [str(p) for p in getattr(record, "configfiles", None) or []]
        merged: dict[str, Any] = {}
        try:
            _, overrides = split_overrides(sys.argv[1:])
            for path in configfiles:
                merge(merged, read_config(path))
        except ConfigError:
            return record  # the view says it cannot read the analysis
        if not overrides or not configfiles:
            return record
        merge(merged, overrides)
        # relative paths are taken from the last config file's folder, not the temporary one's
        if not merged.get("basedir"):
            merged["basedir"] = str(Path(configfiles[-1]).resolve().parent)
        self._tmp = tempfile.mkdtemp(prefix="coffea-smk-view-")
        extra = Path(self._tmp) / "config.json"
        extra.write_text(json.dumps(merged))
        record = copy.copy(record)
        record.configfiles = [*configfiles, str(extra)]
        return record

    def close(self) -> None:
        try:
            if self._view is not None:
                self._view.close()
                if not self._started and self._held:
                    print("\n".join(self._held), flush=True)  # no workflow ran: Snakemake's output
            if self._raw is not None:
                self._raw.close()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            super().close()

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
