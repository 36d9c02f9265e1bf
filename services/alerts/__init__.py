"""The alerts service (issue 3): subscriptions, rules, signed webhooks and email.

Built so far: the pure decisions it will stand on, each tested on its own: Standard Webhooks
signing with secret rotation (`signing`), the SSRF guard for webhook targets (`ssrf`), and the
retry schedule with Retry-After handling (`retry`). The pipeline (evaluate, decide, enqueue,
claim, deliver, settle) will consume the scoring service's change feed (`score_change`), as
described in docs/architecture.md.
"""
