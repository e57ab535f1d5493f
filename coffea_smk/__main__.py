"""``python -m coffea_smk``: the CLI, and the job steps that Snakemake rules run."""

from __future__ import annotations

import sys


def _main() -> int:
    if sys.argv[1:2] == ["job"]:
        from coffea_smk.smk.jobserver import run_via_server  # noqa: PLC0415  a job starts without importing what the CLI needs (job server: before numpy)

        code = run_via_server(sys.argv[2:])
        if code is not None:
            return code
        from coffea_smk.smk.jobs import main  # noqa: PLC0415  only when no job server ran it

        return main(sys.argv[2:])
    if sys.argv[1:2] == ["jobserver"]:
        from coffea_smk.smk.jobserver import serve  # noqa: PLC0415  the server only

        serve(sys.argv[2], sys.argv[3:])
        return 0
    from coffea_smk.cli import main as cli_main  # noqa: PLC0415  not in jobs

    return cli_main()


if __name__ == "__main__":
    sys.exit(_main())
