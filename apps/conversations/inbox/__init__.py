"""The inbox: the agent-facing screens, server-rendered with htmx for the live parts.

One module per screen (`listing`, `thread`, `composer`, `contact`, `workspace`), with `access`
(who may see them), `lookups` (the scoped helpers that give one 404 for missing and another
tenant's), `forms`, `urls` and the template tags. Views parse the request, call one service of
`outbound` or the app's `services`, and render.
"""
