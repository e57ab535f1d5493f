"""NanoAOD events with lazy columns and their behaviours; coffea NanoEvents for coffea processors."""
