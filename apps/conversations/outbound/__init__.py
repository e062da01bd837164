"""Outbound: everything between an agent's click and Meta's wamid.

`gate` decides whether a send may happen (consent, the 24-hour window, templates, credentials);
`outbox` queues every send after the gate; `dispatcher` is the worker that claims queued rows,
asks the gate again and calls Graph; `media` adds attachments on both sides; `settle` fails or
retries a message that was not sent; `statuses` moves a message along Meta's status webhooks;
`template_sync` keeps the templates the gate checks in step with Meta. Imports neither `inbound`
nor `inbox`.
"""
