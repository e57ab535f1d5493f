"""The analysis as typed models: the config, the fileset, the processor and the settings derived from them."""
