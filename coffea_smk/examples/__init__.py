"""Example processors shipped with coffea_smk (used by the demo and the tests)."""
