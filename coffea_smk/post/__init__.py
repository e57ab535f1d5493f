"""What an analysis does with its result: normalisation, plots, the report."""
