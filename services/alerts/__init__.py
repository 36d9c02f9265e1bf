"""The alerts service (issue 3): subscriptions, rules, signed webhooks and email.

Not built yet. It will consume the scoring service's change feed (the `score_change` table,
also served at GET /v1/score-changes), as described in docs/architecture.md.
"""
