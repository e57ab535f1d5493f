"""Snakemake logger plugin ``coffea-smk``: the live progress view of a coffea_smk run.

Selected by ``coffea-smk run`` (and by ``snakemake --logger coffea-smk``). Glue
only: the view is :mod:`coffea_smk.smk.progress_display`. With Snakemake's
``--verbose``, ``--printshellcmds``, ``--debug-dag`` or a dry run it prints
Snakemake's own log unchanged, as without the plugin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
        if s.verbose or s.printshellcmds or s.debug_dag or s.dryrun:
            self._raw = ColorizingTextHandler(nocolor=s.nocolor, formatter=formatter, filter=log_filter)
            return

        def format_record(record: logging.LogRecord) -> str | None:
            return formatter.format(record) if log_filter.filter(record) else None

        from coffea_smk.smk.progress_display import ProgressLog

        settings = self.settings if isinstance(self.settings, LogHandlerSettings) else LogHandlerSettings()
        self._view = ProgressLog(format_record, interval=settings.interval)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._raw is not None:
                self._raw.handle(record)
            else:
                self._view.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            if self._view is not None:
                self._view.close()
            if self._raw is not None:
                self._raw.close()
        finally:
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
