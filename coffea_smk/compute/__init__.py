"""A Python API for notebooks on the coffea_smk workflow: coffea's ``Runner`` and a
``coffea.compute``-style backend, both running ``coffea-smk run`` underneath."""
