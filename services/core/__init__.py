"""Plumbing shared by the services: database, tenants and API keys, problems, audit, idempotency.

Imports no service package.
"""
