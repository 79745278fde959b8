"""The Prefect layer: thin flows and tasks over the mftasks library (which never imports Prefect)."""
