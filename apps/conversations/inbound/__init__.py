"""Inbound: everything between Meta's POST and a stored message.

`webhook` verifies the signature and commits the raw body to the journal before answering 200;
`journal` drains it in batches on the worker; `ingest` routes each change by its business number
and stores messages, contacts, conversations, statuses and template reviews (the batched path
with its compiled INSERTs and batch lookups, and the one-by-one path it falls back to);
`consent` writes what inbound traffic says about consent to the ledger. Imports `outbound` (a
status webhook settles an outbound message; an opt-out queues its one confirmation), never
`inbox`.
"""
