"""Data-control actions, each audited: exporting the contact book, and one contact's own data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from apps.audit.services import Actor, record

from .contact_data import BundleSummary, write_contact_bundle
from .contact_export import FORMATS, contact_rows


class ExportError(ValueError):
    """An export asked for in a way that cannot be served; the message is for a person."""


class ContactExport:
    """The tenant's whole contact book as text pieces (CSV or JSON lines), for a streamed
    response or a file; `rows` counts the contacts handed out so far.

    Writes a `contacts.exported` audit event with the row count when the stream ends, or is
    closed early (`complete` false: a download the reader stopped)."""

    def __init__(self, tenant: Any, *, actor: Actor, fmt: str = "csv", via: str) -> None:
        if fmt not in FORMATS:
            raise ExportError(f"Unknown format {fmt!r}: use one of {', '.join(sorted(FORMATS))}.")
        self.tenant, self.actor, self.fmt, self.via = tenant, actor, fmt, via
        self.rows = 0
        self._pieces: Iterator[str] | None = None

    def _counted(self):
        for row in contact_rows(self.tenant.pk):
            self.rows += 1
            yield row

    def _generate(self) -> Iterator[str]:
        complete = False
        try:
            yield from FORMATS[self.fmt](self._counted())
            complete = True
        finally:
            record(
                "contacts.exported",
                self.tenant,
                actor=self.actor,
                data={"rows": self.rows, "format": self.fmt, "complete": complete, "via": self.via},
            )

    def __iter__(self) -> Iterator[str]:
        if self._pieces is None:
            self._pieces = self._generate()
        return self._pieces

    def close(self) -> None:
        """Stop early (the response or the command is done with it); audits what was sent."""
        if self._pieces is not None:
            self._pieces.close()


def export_contact_data(contact: Any, out: IO[bytes], *, actor: Actor, via: str) -> BundleSummary:
    """Write the contact's data bundle (a ZIP) to `out` and audit it with what it holds
    (counts only: the audit trail keeps no personal data). Inside the tenant's scope."""
    summary = write_contact_bundle(contact, out)
    record(
        "contact.data_exported",
        contact,
        actor=actor,
        data={
            "messages": summary.messages,
            "notes": summary.notes,
            "consent_events": summary.consent_events,
            "media_files": summary.media_files,
            "via": via,
        },
    )
    return summary
