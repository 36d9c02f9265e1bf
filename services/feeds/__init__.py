"""Incident feeds: ACLED and UCDP importers, merging, polling and a synthetic generator."""
