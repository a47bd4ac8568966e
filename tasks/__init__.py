"""The stages of an ingestion run, one module each: a pure function plus a thin Prefect task."""
