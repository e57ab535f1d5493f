"""``map_files``: a function of each input file (its uproot directory) instead of its events.

The work runs as any other processor of the workflow (keyed, resumable, on any profile):
:class:`FileFunction` is the processor, called on every chunk with lazy events it never
reads; on a file's first chunk it opens the file and calls the function on its root
directory, on the other chunks it returns nothing (``None``, the identity of the sum). So the
function runs once per file (a file without entries has no chunk and is not visited), and a
dataset's result is the sum of the function's results over its files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coffea_smk.io.files import open_file


class FileFunction:
    """The processor of ``map_files``: ``func(directory)`` once per file."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def process(self, events: Any) -> Any:
        meta = events.metadata
        if meta["entrystart"] != 0:  # not the file's first chunk: the file was done there
            return None
        path = meta["filename"]
        if path.endswith(".parquet"):
            raise TypeError(f"map_files: {path} is a Parquet file, not a ROOT file: use map_steps")
        with open_file(path) as rootfile:
            return self.func(rootfile)

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
