"""Chaining: a second analysis over a skim of a first one, in the same Snakefile.

The first analysis is a ``module`` of the outer Snakefile. The second cannot be one: its
fileset (the first's skim manifest) does not exist when the Snakefile is parsed, and an
analysis reads its fileset then. So one rule of the outer workflow runs the second as a
workflow of its own (``coffea-smk run``), in its own directory (Snakemake locks a directory's
outputs for the run there), once the first's global result, which writes the manifest, exists.

Whether that rule is due is decided when the outer Snakefile is parsed, as the first's
``publish`` job is: the second is up to date when its fileset (the first's manifest of the
analysis as configured now) exists and every fixed name of the second leads to an output
that exists, of the second as configured now (its keys hold the skim files' identities),
complete. Otherwise :attr:`Chain.targets` asks for a temporary marker named after what was
found, so it never stands for an earlier run. This holds without ``.snakemake/``, and also
catches a change of the second's own config or processor.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coffea_smk.engine.meta import GlobalMeta
from coffea_smk.results import ResultFileError, load_meta
from coffea_smk.smk.layout import Layout
from coffea_smk.smk.names import HEX
from coffea_smk.smk.outputs import PATHS, SKIM_MANIFEST, Kind
from coffea_smk.smk.overrides import read_config
from coffea_smk.spec.config import AnalysisConfig, ConfigError
from coffea_smk.util.hashing import key_of

__all__ = ["Chain", "skim_fileset"]

_RESULT = re.compile("^" + re.escape(PATHS[Kind.RESULT]).replace(re.escape("{key}"), f"({HEX})") + "$")


def skim_fileset(result: str, skim: str) -> str:
    """The fileset (``fileset.json``) of skim ``skim`` of the analysis whose keyed global result is
    ``result`` (``rules.<prefix>_all.input[0]`` of a ``module``): written with that result.

    Raises:
        ValueError: ``result`` is no keyed global result (``<outdir>/global/<key>.npz``).
    """
    path = Path(result)
    match = _RESULT.match(f"{path.parent.name}/{path.name}")
    if match is None:
        raise ValueError(
            f"{result} is not a keyed global result (<outdir>/{PATHS[Kind.RESULT]}): "
            "give the module's rules.<prefix>_all.input[0]"
        )
    folder = SKIM_MANIFEST.format(name=skim, key=match.group(1))
    return str(path.parent.parent / folder / "fileset.json")


@dataclass(frozen=True)
class Chain:
    """A second analysis whose fileset is a skim of a first one, run by one rule of the outer workflow.

    In the outer Snakefile (the first analysis imported as ``module first``)::

        chained = coffea_smk.Chain("second/analysis.yaml", after=rules.first_all.input[0], skim="dimuon")

        rule second:
            input: chained.after
            output: temp(chained.marker)
            log: chained.log
            threads: workflow.cores
            localrule: True
            shell: chained.command

    and ``chained.targets`` among the inputs of the outer ``all``.
    """

    configfile: str
    """The second analysis's config; its folder is where it runs (its ``.snakemake/``, its
    ``outdir``). Its ``fileset`` is replaced by the first's skim (``--config fileset=...``)."""
    after: str
    """The first analysis's keyed global result (``rules.<prefix>_all.input[0]``)."""
    skim: str
    """The name of the first's skim (its key in the processor's output)."""
    args: tuple[str, ...] = ()
    """More arguments for the second's ``coffea-smk run`` (``--profile slurm``); no ``--config``:
    settings of the second go in its config."""

    def __post_init__(self) -> None:
        if Path(self.directory).resolve() == Path.cwd().resolve():
            raise ValueError(
                f"{self.configfile}: a chained analysis runs in a folder of its own (Snakemake locks a "
                "folder's outputs for the run there, the outer run's in this one)"
            )
        if any(a in ("--config", "-C") or a.startswith("--config=") for a in self.args):
            raise ValueError("Chain args: no --config (it sets the fileset); put settings in the config")
        skim_fileset(self.after, self.skim)  # a wrong `after` fails here, not in the job

    @property
    def directory(self) -> str:
        return os.path.dirname(self.configfile) or "."

    @property
    def fileset(self) -> str:
        """The first's skim as configured now (absolute: the second runs elsewhere)."""
        return os.path.abspath(skim_fileset(self.after, self.skim))

    @property
    def log(self) -> str:
        return f"{self.directory}/chain.log"

    @cached_property
    def marker(self) -> str:
        """The rule's output: a temporary file named after the state found at parse time (each run
        of the rule changes its folder), so it never stands for an earlier run."""
        found = [_lstat(p) for p in (self._folder, self.after, self.fileset)]
        return f"{self._folder}/{key_of('chain', os.path.abspath(self.configfile), self.args, found)}.done"

    @property
    def _folder(self) -> str:
        return f"{self.directory}/.chain"

    @cached_property
    def targets(self) -> list[str]:
        """What the outer ``all`` asks for: the marker while the second is not up to date."""
        return [] if self.up_to_date() else [self.marker]

    @property
    def command(self) -> str:
        """The rule's shell command (with Snakemake's ``{threads}``, ``{log}`` and ``{output}``)."""
        nested = [sys.executable, "-m", "coffea_smk", "run", os.path.abspath(self.configfile)]
        line = " ".join(_quoted(a) for a in [*nested, "--config", f"fileset={self.fileset}", *self.args])
        where = _quoted(os.path.abspath(self.directory))
        # Snakemake keeps a temporary input of the target rule: the earlier markers go here
        earlier = f"{_quoted(self._folder)}/*.done"
        run = f"( cd {where} && {line} --cores {{threads}} ) > {{log:q}} 2>&1"
        return f"{run} && rm -f {earlier} && touch {{output:q}}"

    def config(self) -> dict[str, Any]:
        """The second's config as its run sees it, ``outdir`` absolute (this process runs elsewhere).

        Raises:
            ConfigError: The config cannot be read.
        """
        data = read_config(self.configfile, {"fileset": self.fileset})
        outdir = data.get("outdir", AnalysisConfig.model_fields["outdir"].default)
        data["outdir"] = os.path.join(os.path.abspath(self.directory), str(outdir))
        return data

    def up_to_date(self) -> bool:
        """Whether the second, over the first's skim as configured now, is done, complete and published
        (read only: stats, readlinks, the result's meta)."""
        if not (os.path.exists(self.after) and os.path.exists(self.fileset)):
            return False
        try:
            layout = Layout.from_config(self.config(), os.path.abspath(self.configfile))
            complete = GlobalMeta.model_validate(load_meta(layout.result)).complete
        except (ConfigError, ResultFileError, ValidationError, OSError):
            return False  # missing or damaged: the run says what is wrong
        outputs = layout.aliases()  # every fixed name, and the output it must lead to
        return complete and all(os.path.exists(p) for p in outputs.values()) and not layout.unpublished()


def _quoted(text: str) -> str:
    """``text`` quoted for the shell, its braces doubled for Snakemake's formatting."""
    return shlex.quote(text).replace("{", "{{").replace("}", "}}")


def _lstat(path: str) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]
