"""Processors for the XRootD tests: the dimuon analysis while the storage misbehaves.

Each fault happens once, on the chunk that starts at ``COFFEA_SMK_TEST_FAULT_ENTRY`` of the
file named ``COFFEA_SMK_TEST_FAULT_FILE``, and is recorded in ``COFFEA_SMK_TEST_FAULT_MARK``
(a file: the retry of the chunk, in the same job or another, finds it and does not fault again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from coffea_smk.examples.dimuon import DimuonProcessor


def _due(events: Any) -> bool:
    md = events.metadata
    mark = Path(os.environ["COFFEA_SMK_TEST_FAULT_MARK"])
    if mark.exists() or md["entrystart"] != int(os.environ["COFFEA_SMK_TEST_FAULT_ENTRY"]):
        return False
    if not str(md["filename"]).endswith(os.environ["COFFEA_SMK_TEST_FAULT_FILE"]):
        return False
    mark.write_text("done\n")
    return True


class RestartingServer(DimuonProcessor):
    """Stops the XRootD server (``.ci/xrootd`` scripts, ``XRD_*`` in the environment) for
    ``COFFEA_SMK_TEST_DOWN`` seconds before this chunk reads its columns."""

    def process(self, events: Any) -> dict[str, Any]:
        if _due(events):
            scripts = Path(os.environ["COFFEA_SMK_TEST_XROOTD_SCRIPTS"])
            subprocess.run(["bash", str(scripts / "stop-xrootd.sh")], check=True, capture_output=True)
            start = ["bash", str(scripts / "start-xrootd.sh")]
            down = float(os.environ.get("COFFEA_SMK_TEST_DOWN", "3"))
            threading.Timer(down, lambda: subprocess.run(start, check=True, capture_output=True)).start()
        return super().process(events)


class DroppingConnections(DimuonProcessor):
    """Resets every connection through the test's proxy (pid ``COFFEA_SMK_TEST_PROXY_PID``)
    before this chunk reads its columns."""

    def process(self, events: Any) -> dict[str, Any]:
        if _due(events):
            os.kill(int(os.environ["COFFEA_SMK_TEST_PROXY_PID"]), signal.SIGUSR1)
        return super().process(events)
