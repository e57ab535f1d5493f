"""``python -m coffea_smk``: the CLI, and the job steps that Snakemake rules run."""

from __future__ import annotations

import sys


def _main() -> int:
    if sys.argv[1:2] == ["job"]:
        from coffea_smk._jobs import main

        return main(sys.argv[2:])
    from coffea_smk.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(_main())
