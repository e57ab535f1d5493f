"""The buffer keys behind an awkward array or a field path, found on its layout without reading."""

from __future__ import annotations

from typing import Any

import awkward as ak

from coffea_smk.buffers import _awkward

_BUFFER_ATTRIBUTES = ("data", "offsets", "starts", "stops", "index", "tags", "mask")


def virtual_buffer_keys(array: Any) -> list[str]:
    """Buffer keys of the lazy (virtual) buffers behind an awkward array, without reading any."""
    try:
        layout = ak.to_layout(array, allow_record=True)
    except Exception:
        return []
    if isinstance(layout, ak.record.Record):
        layout = layout.array
    out: list[str] = []
    stack = [layout]
    while stack:
        node = stack.pop()
        out.extend(_own_keys(node))
        if isinstance(node, (ak.contents.RecordArray, ak.contents.UnionArray)):
            stack.extend(reversed(_awkward.stored_contents(node)))
        elif hasattr(node, "content"):
            stack.append(node.content)
    return out


def project(events: Any, path: list[str]) -> list[str] | None:
    """Keys behind ``events.a.b`` found on the layout, so that nothing is read (None: no such field)."""
    node = ak.to_layout(events)
    above: list[str] = []
    for part in path:
        while not isinstance(node, ak.contents.RecordArray):
            if not hasattr(node, "content"):
                return None
            above.extend(_own_keys(node))  # the offsets of the lists on the way
            node = node.content
        if part not in node.fields:
            return None
        node = _awkward.stored_contents(node)[node.field_to_index(part)]
    return above + virtual_buffer_keys(node)


def _own_keys(node: Any) -> list[str]:
    """Keys of a layout node's own virtual buffers (not its children's)."""
    out = []
    for attr in _BUFFER_ATTRIBUTES:
        buf = getattr(node, attr, None)
        if isinstance(buf, ak.index.Index):
            buf = buf.data
        key = _awkward.buffer_key(buf)
        if key is not None:
            out.append(key)
    return out
