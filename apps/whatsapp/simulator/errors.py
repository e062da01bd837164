"""Meta's errors as the simulator answers them: the catalogue of codes it knows (HTTP status,
title, details), :class:`SimError` with Meta's synchronous error JSON, the two errors every
endpoint can answer (an invalid token, an unknown object) and the error object of ``failed``
status webhooks."""

from __future__ import annotations

import base64
import secrets
from typing import Any

ERROR_HREF = "/documentation/business-messaging/whatsapp/support/error-codes"

# code -> (HTTP status, title, details). HTTP statuses follow the reference's §12.3 table.
ERROR_CATALOG: dict[int, tuple[int, str, str]] = {
    1: (400, "An unknown error occurred", "An unknown error occurred."),
    2: (503, "Service temporarily unavailable", "Service temporarily unavailable."),
    4: (400, "Application request limit reached", "Too many calls from this app."),
    100: (400, "Invalid parameter", "Invalid parameter."),
    131000: (500, "Something went wrong", "Message failed to send because of an unknown error."),
    131005: (403, "Access denied", "Permission is either not granted or has been removed."),
    131008: (400, "Required parameter is missing", "A required parameter is missing."),
    131009: (400, "Parameter value is not valid", "One or more parameter values are invalid."),
    131016: (503, "Service unavailable", "A service is temporarily unavailable."),
    131026: (
        400,
        "Message undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number is not a "
        "WhatsApp phone number; the recipient has not accepted the new Terms of Service; the "
        "recipient is using an old WhatsApp version.",
    ),
    131030: (
        400,
        "Recipient phone number not in allowed list",
        "Recipient phone number not in allowed list: Add recipient phone number to recipient "
        "list and try again.",
    ),
    131042: (400, "Business eligibility payment issue", "There was an error related to payment."),
    131047: (
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    ),
    131048: (400, "Spam rate limit hit", "Message failed to send because of spam restrictions."),
    131049: (
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: (
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
        "The recipient has stopped marketing messages from this business.",
    ),
    131051: (400, "Message type unknown", "Message type is currently not supported."),
    131053: (400, "Media upload error", "Unable to upload the media used in the message."),
    131056: (
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
    131057: (500, "Account in maintenance mode", "Business Account is in maintenance mode."),
    130429: (
        400,
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time.",
    ),
    132000: (
        400,
        "Number of parameters does not match the expected number of params",
        "The number of variable parameter values does not match the template.",
    ),
    132001: (
        404,
        "Template name does not exist in the translation",
        "The template does not exist in the specified language or has not been approved.",
    ),
    132015: (400, "Template is Paused", "Template is paused due to low quality."),
    132016: (400, "Template is Disabled", "Template has been paused too many times."),
    133010: (400, "Phone number Not Registered", "Phone number is not registered."),
    80007: (400, "Rate limit issues", "The WhatsApp Business Account reached its rate limit."),
}


class SimError(Exception):
    """A Graph-style error the simulator answers with."""

    def __init__(
        self,
        code: int,
        *,
        http_status: int | None = None,
        message: str | None = None,
        details: str | None = None,
        subcode: int | None = None,
        error_type: str = "OAuthException",
    ) -> None:
        status, title, default_details = ERROR_CATALOG.get(code, (400, "Error", ""))
        self.code = code
        self.http_status = http_status or status
        self.title = title
        self.message = message or f"(#{code}) {title}"
        self.details = default_details if details is None else details
        self.subcode = subcode
        self.error_type = error_type
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """Meta's synchronous error JSON (reference §12.1)."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
        }
        if self.details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["fbtrace_id"] = fbtrace_id()
        return {"error": error}


def token_error() -> SimError:
    """Meta's 190 for a missing, unknown or wrong bearer token."""
    return SimError(
        190,
        http_status=401,
        message="Invalid OAuth access token - Cannot parse access token",
        details="",
    )


def unknown_object(object_id: str, method: str) -> SimError:
    """Meta's 100/33 for an id that does not exist or does not support the method."""
    return SimError(
        100,
        subcode=33,
        error_type="GraphMethodException",
        message=(
            f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this operation."
        ),
        details="",
    )


def async_error(code: int, details: str | None = None) -> dict[str, Any]:
    """The error object Meta puts in ``statuses[].errors[]`` / ``messages[].errors[]``."""
    _status, title, default_details = ERROR_CATALOG.get(code, (400, "Error", ""))
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details if details is not None else default_details},
        "href": ERROR_HREF,
    }


def fbtrace_id() -> str:
    """A random trace id like the ones Meta puts in errors and ``X-FB-Trace-ID``."""
    return base64.urlsafe_b64encode(secrets.token_bytes(12)).decode("ascii").rstrip("=")
