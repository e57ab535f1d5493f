"""A processor module that fails at import."""

import this_module_does_not_exist  # noqa: F401


class P:
    def process(self, events):  # type: ignore[no-untyped-def]
        return {}
