"""A small client for the parts of Meta's Graph API that Klaros calls.

Only Meta's official Cloud API is spoken here (P6). TLS is verified; a plain ``http://`` base
URL is refused unless it points at loopback (the local simulator). The access token goes only to
the Graph host and Meta's media hosts and never into logs, reprs or exception messages.

Errors come in two kinds that a worker must treat differently:

* :class:`GraphError`: Meta answered with an error. ``retryable`` or ``permanent`` (exactly one
  is true) says whether to back off and try again, ``human_explanation`` what to tell a person.
* :class:`GraphTransportError`: no usable answer (DNS, refused, reset, timeout). Always
  retryable, but for a send the message may or may not have gone out (``outcome_unknown``):
  reconcile from status webhooks before sending again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

__all__ = [
    "DEFAULT_GRAPH_URL",
    "GRAPH_API_VERSION",
    "GraphClient",
    "GraphError",
    "GraphTransportError",
    "MediaInfo",
    "MediaTooLargeError",
    "SendResult",
    "check_base_url",
    "explain_error_code",
    "media_sha256_matches",
]

logger = logging.getLogger("klaros.whatsapp.graph")

# Meta's WhatsApp pages use v25.0 in examples (reference §13); v25.0 is available until 2028.
GRAPH_API_VERSION = "v25.0"
DEFAULT_GRAPH_URL = f"https://graph.facebook.com/{GRAPH_API_VERSION}"
# (connect, read) seconds. Sends are small; the read timeout covers Meta's slow moments.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)
# Meta never hands out inbound media above 100 MB (reference §9.5).
DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
USER_AGENT = "Klaros/1.0 (+https://github.com/klaros)"
MAX_TEMPLATE_PAGES = 200

# Hosts Meta serves media downloads from, besides the Graph host itself.
_MEDIA_HOST_SUFFIXES = (".fbsbx.com", ".fbcdn.net", ".facebook.com", ".whatsapp.net")

# --------------------------------------------------------------------------------------------
# Error classification (reference §12.3)

_RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057})
_TOKEN_CODES = frozenset({0, 190})

_EXPLANATIONS: dict[int, str] = {
    0: "Meta rejected the access token (invalid, expired or revoked). Reconnect the number with "
    "a new token.",
    1: "Meta reported an unknown error. It is usually temporary; the send will be retried once.",
    2: "Meta's API is temporarily unavailable. The send will be retried.",
    3: "The Meta app lacks the capability or permission for this call. Check the app's "
    "WhatsApp permissions.",
    4: "The Meta app made too many API calls. Sending will resume after a pause.",
    10: "Permission denied: the token cannot act for this number. Check the system user's "
    "assets and permissions.",
    33: "Meta does not know this id (the number or object may have been deleted).",
    100: "Meta rejected a parameter of the request. This is a bug in the request, not something "
    "retrying will fix.",
    190: "The access token has expired or is invalid. Reconnect the number with a new token, "
    "then retry.",
    368: "The account is temporarily blocked for policy violations. An admin must review it in "
    "WhatsApp Manager.",
    470: "More than 24 hours have passed since the customer last wrote. Send an approved "
    "template instead.",
    80007: "The WhatsApp Business Account hit Meta's hourly API limit. Calls will resume later.",
    130429: "The number is sending faster than Meta allows (throughput limit). Sending will "
    "slow down and retry.",
    130472: "Meta did not deliver this marketing message because the customer is part of a Meta "
    "experiment.",
    130497: "This business cannot message customers in the recipient's country.",
    131000: "Meta reported an internal error. The send will be retried a few times.",
    131005: "Access denied: the token lacks permission for this number.",
    131008: "A required parameter was missing from the request.",
    131009: "A parameter value was invalid (for a reaction: the message is too old, unknown or "
    "itself a reaction).",
    131016: "WhatsApp is temporarily unavailable. The send will be retried.",
    131021: "The recipient is the sending number itself.",
    131026: "The message could not be delivered: the recipient may not use WhatsApp, may have "
    "an old app or not have accepted the terms, or may have blocked this number.",
    131030: "The recipient is not in the test number's allowed list. Add it in the Meta dashboard.",
    131031: "The WhatsApp account is locked (for example after a wrong two-step PIN).",
    131037: "The business number has no approved display name yet.",
    131042: "A billing problem with the WhatsApp Business Account (payment method or credit "
    "line). An admin must fix it in Meta Business Manager.",
    131045: "The number is not registered correctly (certificate). Re-register it.",
    131047: "More than 24 hours have passed since the customer last wrote. Only an approved "
    "template can be sent now.",
    131048: "Too many of this number's messages were blocked or reported as spam. Slow down and "
    "check message quality.",
    131049: "Meta chose not to deliver this marketing message to keep engagement healthy. Wait at "
    "least a day before trying again.",
    131050: "The customer stopped marketing messages from this business. Do not send them "
    "marketing templates.",
    131051: "WhatsApp does not support this message type.",
    131052: "Meta could not download the customer's media (it may be too large). Ask the "
    "customer to send it again.",
    131053: "Meta could not use the media (wrong type, size or unreadable file).",
    131056: "Too many messages to the same customer in a short time. The send will wait and retry.",
    131057: "The number is in maintenance mode for a moment. The send will retry shortly.",
    131062: "This message type cannot be sent to a business-scoped user id; use the phone number.",
    131063: "Marketing templates are disabled for the Cloud API on this account.",
    131064: "The messaging limit was reduced because of template classification problems.",
    132000: "The number of template parameters does not match the approved template.",
    132001: "The template does not exist in this language or is not approved. Re-sync templates.",
    132005: "The template text is too long once parameters are filled in.",
    132007: "The template content breaks WhatsApp's formatting policy.",
    132008: "A template parameter is formatted incorrectly.",
    132012: "A template parameter does not match the format the template expects.",
    132015: "The template is paused because of low quality.",
    132016: "The template was disabled after being paused too often. Create a new template.",
    132018: "A template parameter failed validation.",
    133010: "The phone number is not registered on the WhatsApp Cloud API. Register it.",
    135000: "Meta rejected the request's parameters.",
    137000: "The customer's identity key changed; confirm who you are talking to.",
}


def explain_error_code(code: int | None, http_status: int | None = None) -> str:
    """Plain-English advice for a Meta error code, for agents and admins."""
    if code is not None and code in _EXPLANATIONS:
        return _EXPLANATIONS[code]
    if code is not None and 200 <= code <= 299:
        return "The Meta app lost a permission it needs. Re-grant it in the Meta dashboard."
    if code is not None and 132000 <= code <= 132999:
        return "Meta rejected the template message. Check the template and its parameters."
    if code is not None and 133000 <= code <= 133999:
        return "The phone number's registration with WhatsApp needs attention."
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return "Meta is having trouble right now. The request will be retried."
    return "Meta rejected the request" + (f" (error {code})." if code is not None else ".")


class GraphError(Exception):
    """Meta answered a Graph call with an error (HTTP 4xx/5xx or an ``error`` object)."""

    def __init__(
        self,
        http_status: int,
        code: int | None,
        subcode: int | None = None,
        title: str = "",
        message: str = "",
        details: str = "",
        fbtrace_id: str | None = None,
        *,
        error_type: str | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.title = title
        self.message = message
        self.details = details
        self.fbtrace_id = fbtrace_id
        self.error_type = error_type
        self.raw = raw or {}
        super().__init__(self._summary())

    def __reduce__(self) -> tuple[Any, ...]:
        # Task queues pickle exceptions; the default reduce would lose every field.
        args = (self.http_status, self.code, self.subcode, self.title, self.message)
        args += (self.details, self.fbtrace_id)
        return (_rebuild_graph_error, (args, self.error_type, dict(self.raw)))

    def _summary(self) -> str:
        code = f"code {self.code}" if self.code is not None else "no code"
        text = self.message or self.title or "no message"
        details = f": {self.details}" if self.details else ""
        return f"Graph API error (HTTP {self.http_status}, {code}) {text}{details}"

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later (rate limits, Meta outages, 5xx)."""
        if self.code in _RETRYABLE_CODES:
            return True
        if self.code is not None and (
            self.code in _TOKEN_CODES
            or self.code in _EXPLANATIONS
            or 200 <= self.code <= 299
            or 132000 <= self.code <= 133999
        ):
            return False
        return self.http_status >= 500 or self.http_status == 429

    @property
    def permanent(self) -> bool:
        """True when retrying the same request is pointless (exactly one of this and retryable)."""
        return not self.retryable

    @property
    def token_invalid(self) -> bool:
        """True when the number's access token must be replaced (code 190/0 or HTTP 401)."""
        return self.code in _TOKEN_CODES or self.http_status == 401

    @property
    def human_explanation(self) -> str:
        """Plain-English advice for this error."""
        return explain_error_code(self.code, self.http_status)


class GraphTransportError(Exception):
    """No usable answer from Meta: connection failure, reset or timeout.

    Always retryable. ``outcome_unknown`` is True when the request may have reached Meta (read
    timeout, connection dropped after sending): a send may have gone out.
    """

    retryable = True
    permanent = False

    def __init__(self, message: str, *, outcome_unknown: bool) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (str(self), self.outcome_unknown))

    @property
    def human_explanation(self) -> str:
        """Plain-English advice for this failure."""
        return "Meta could not be reached. The request will be retried."


def _rebuild_graph_error(
    args: tuple[Any, ...], error_type: str | None, raw: dict[str, Any]
) -> GraphError:
    return GraphError(*args, error_type=error_type, raw=raw)


def _rebuild_transport_error(message: str, outcome_unknown: bool) -> GraphTransportError:
    return GraphTransportError(message, outcome_unknown=outcome_unknown)


class MediaTooLargeError(Exception):
    """A media download exceeded the size cap; nothing beyond the cap was read."""


@dataclass(frozen=True)
class SendResult:
    """What ``POST /{phone_number_id}/messages`` accepted. Accepted is not delivered."""

    wamid: str
    wa_id: str | None
    input: str | None
    user_id: str | None
    message_status: str | None
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class MediaInfo:
    """``GET /{media_id}``: where to download a media object (URL valid ~5 minutes)."""

    media_id: str
    url: str
    mime_type: str
    sha256: str
    file_size: int | None
    raw: Mapping[str, Any] = field(repr=False)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """Validate a Graph base URL and return it without a trailing slash.

    ``https://`` anywhere; ``http://`` only for loopback hosts (127.0.0.0/8, ::1, localhost).
    Raises ValueError otherwise.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise ValueError("Graph base URL needs a host, e.g. https://graph.facebook.com/v25.0")
    if parts.scheme == "https":
        pass
    elif parts.scheme == "http":
        if not _is_loopback(host):
            raise ValueError(
                f"Refusing plain http:// Graph URL for non-loopback host {host!r}; use https://"
            )
    else:
        raise ValueError(f"Graph base URL must use https:// (got {parts.scheme or 'no'} scheme)")
    if parts.username or parts.password:
        raise ValueError("Graph base URL must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("Graph base URL must not have a query string or fragment")
    return url.rstrip("/")


def media_sha256_matches(data: bytes, expected: str) -> bool:
    """Compare ``data``'s SHA-256 with Meta's value, given as hex (Graph) or base64 (webhooks)."""
    digest = hashlib.sha256(data).digest()
    expected = (expected or "").strip()
    if len(expected) == 64:
        try:
            return hmac.compare_digest(digest, bytes.fromhex(expected))
        except ValueError:
            pass
    try:
        decoded = base64.b64decode(expected, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(decoded) == 32 and hmac.compare_digest(digest, decoded)


class GraphClient:
    """A Graph API client bound to one base URL (with version) and one access token.

    Not thread-safe in the sense that ``requests.Session`` is not guaranteed to be; give each
    worker thread its own client.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        session: requests.Session | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.base_url = check_base_url(base_url)
        if not access_token or any(ch in access_token for ch in "\r\n"):
            raise ValueError("GraphClient needs a non-empty, single-line access token")
        self._token = access_token
        self.timeout = timeout
        self.max_download_bytes = max_download_bytes
        self._host = (urlsplit(self.base_url).hostname or "").lower()
        self._origin = self._origin_of(self.base_url)
        self.session = session or requests.Session()
        self.session.verify = True
        self.session.headers["User-Agent"] = user_agent
        # Never let requests pick credentials from ~/.netrc for Meta's hosts.
        self.session.trust_env = False

    def __repr__(self) -> str:
        return f"<GraphClient {self.base_url}>"

    def close(self) -> None:
        """Close the underlying HTTP session."""
        self.session.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- messages

    def send_message(self, phone_number_id: str, payload: Mapping[str, Any]) -> SendResult:
        """``POST /{phone_number_id}/messages`` with ``payload`` (``messaging_product`` added).

        Returns the wamid Meta assigned. Raises GraphError or GraphTransportError.
        """
        body = {"messaging_product": "whatsapp", **payload}
        data = self._request("POST", f"/{_seg(phone_number_id)}/messages", json=body)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise GraphError(200, None, message="send answered without messages[].id", raw=data)
        wamid = messages[0].get("id")
        if not isinstance(wamid, str) or not wamid:
            raise GraphError(200, None, message="send answered without messages[].id", raw=data)
        contacts = data.get("contacts")
        contact = contacts[0] if isinstance(contacts, list) and contacts else {}
        contact = contact if isinstance(contact, dict) else {}
        return SendResult(
            wamid=wamid,
            wa_id=contact.get("wa_id"),
            input=contact.get("input"),
            user_id=contact.get("user_id"),
            message_status=messages[0].get("message_status"),
            raw=data,
        )

    def mark_read(
        self, phone_number_id: str, wamid: str, *, typing_indicator: bool = False
    ) -> None:
        """Mark an inbound message (and earlier ones in the thread) as read."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": wamid,
        }
        if typing_indicator:
            body["typing_indicator"] = {"type": "text"}
        self._request("POST", f"/{_seg(phone_number_id)}/messages", json=body)

    # ---------------------------------------------------------------- media

    def get_media(self, media_id: str, *, phone_number_id: str | None = None) -> MediaInfo:
        """``GET /{media_id}``: the short-lived download URL and metadata of a media object."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        data = self._request("GET", f"/{_seg(media_id)}", params=params)
        url = data.get("url")
        if not isinstance(url, str) or not url:
            raise GraphError(200, None, message="media lookup answered without a url", raw=data)
        size = data.get("file_size")
        try:
            file_size = int(size) if size is not None else None  # Meta's docs show it quoted
        except (TypeError, ValueError):
            file_size = None
        return MediaInfo(
            media_id=str(data.get("id") or media_id),
            url=url,
            mime_type=str(data.get("mime_type") or ""),
            sha256=str(data.get("sha256") or ""),
            file_size=file_size,
            raw=data,
        )

    def download_media(self, url: str, *, max_bytes: int | None = None) -> bytes:
        """Download media bytes from a URL given by :meth:`get_media` or a webhook.

        Sends the bearer token, so the URL must be on the Graph host or a Meta media host, over
        https (http only on loopback). Streams and stops at ``max_bytes`` (default
        ``max_download_bytes``), raising MediaTooLargeError.
        """
        self._check_media_url(url)
        cap = self.max_download_bytes if max_bytes is None else max_bytes
        response = self._send("GET", url, stream=True, allow_redirects=False)
        try:
            if response.status_code != 200:
                raise self._error_from(response)
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise MediaTooLargeError(f"media is {declared} bytes, above the {cap} byte cap")
            chunks: list[bytes] = []
            total = 0
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    total += len(chunk)
                    if total > cap:
                        raise MediaTooLargeError(f"media exceeds the {cap} byte cap")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise GraphTransportError(
                    f"media download interrupted: {type(exc).__name__}", outcome_unknown=False
                ) from None
            return b"".join(chunks)
        finally:
            response.close()

    def upload_media(self, phone_number_id: str, data: bytes, mime_type: str, filename: str) -> str:
        """``POST /{phone_number_id}/media`` (multipart); returns the new media id."""
        result = self._request(
            "POST",
            f"/{_seg(phone_number_id)}/media",
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename, data, mime_type)},
        )
        media_id = result.get("id")
        if not isinstance(media_id, str | int) or not str(media_id):
            raise GraphError(200, None, message="upload answered without an id", raw=result)
        return str(media_id)

    def delete_media(self, media_id: str, *, phone_number_id: str | None = None) -> None:
        """``DELETE /{media_id}``."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        self._request("DELETE", f"/{_seg(media_id)}", params=params)

    # ---------------------------------------------------------------- templates

    def list_message_templates(
        self,
        waba_id: str,
        *,
        fields: str = "id,name,language,status,category,components,parameter_format",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Every message template of a WABA, following ``paging.next`` to the end."""
        templates: list[dict[str, Any]] = []
        url: str | None = None
        params: dict[str, Any] | None = {"fields": fields, "limit": limit}
        for _page in range(MAX_TEMPLATE_PAGES):
            if url is None:
                data = self._request("GET", f"/{_seg(waba_id)}/message_templates", params=params)
            else:
                data = self._request_url("GET", url)
            page = data.get("data")
            if not isinstance(page, list):
                raise GraphError(200, None, message="template list without data[]", raw=data)
            templates.extend(item for item in page if isinstance(item, dict))
            paging = data.get("paging")
            next_url = paging.get("next") if isinstance(paging, dict) else None
            if not next_url or not page:
                return templates
            # The next URL carries our token's authority; only follow it on the Graph host.
            if self._origin_of(next_url) != self._origin:
                raise GraphError(
                    200, None, message="paging.next points away from the Graph host", raw=data
                )
            url = next_url
        raise GraphError(200, None, message=f"more than {MAX_TEMPLATE_PAGES} template pages")

    # ---------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._request_url(method, self.base_url + path, **kwargs)

    def _request_url(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, url, allow_redirects=False, **kwargs)
        with response:
            if response.status_code != 200:
                raise self._error_from(response)
            try:
                data = response.json()
            except ValueError:
                raise GraphError(
                    response.status_code, None, message="Graph answered 200 with non-JSON body"
                ) from None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            raise self._error_from(response, data)
        if not isinstance(data, dict):
            raise GraphError(response.status_code, None, message="Graph answered non-object JSON")
        return data

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._token}"}
        # Log the path only: query strings may carry paging cursors, never the token.
        logged = urlsplit(url).path
        try:
            response = self.session.request(
                method, url, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.ConnectTimeout:
            logger.warning("Graph %s %s: connect timeout", method, logged)
            raise GraphTransportError(
                f"connect timeout calling {method} {logged}", outcome_unknown=False
            ) from None
        except requests.ConnectionError as exc:
            sent = not _never_connected(exc)
            logger.warning("Graph %s %s: connection error (%s)", method, logged, type(exc).__name__)
            raise GraphTransportError(
                f"connection error calling {method} {logged}: {type(exc).__name__}",
                outcome_unknown=sent and method != "GET",
            ) from None
        except requests.Timeout:
            logger.warning("Graph %s %s: read timeout", method, logged)
            raise GraphTransportError(
                f"read timeout calling {method} {logged}", outcome_unknown=method != "GET"
            ) from None
        except requests.RequestException as exc:
            logger.warning("Graph %s %s: %s", method, logged, type(exc).__name__)
            raise GraphTransportError(
                f"request failed calling {method} {logged}: {type(exc).__name__}",
                outcome_unknown=method != "GET",
            ) from None
        logger.debug("Graph %s %s -> %s", method, logged, response.status_code)
        return response

    @staticmethod
    def _error_from(response: requests.Response, data: dict[str, Any] | None = None) -> GraphError:
        status = response.status_code
        text = ""
        if data is None:
            # Capped: an error body from a media host could be anything.
            raw_body = _read_capped(response, 64 * 1024)
            text = raw_body.decode("utf-8", "replace")
            try:
                data = json.loads(raw_body)
            except ValueError:
                data = None
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            return GraphError(
                status,
                None,
                message=f"HTTP {status} from Graph without an error object",
                details=text[:200],
            )
        error_data = err.get("error_data")
        if isinstance(error_data, dict):
            details = str(error_data.get("details") or "")
        else:
            details = str(error_data or "")
        message = str(err.get("message") or "")
        return GraphError(
            status,
            _int_or_none(err.get("code")),
            _int_or_none(err.get("error_subcode")),
            title=str(err.get("error_user_title") or _title_from(message)),
            message=message,
            details=details,
            fbtrace_id=err.get("fbtrace_id"),
            error_type=err.get("type"),
            raw=data if isinstance(data, dict) else {},
        )

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        return (parts.scheme, (parts.hostname or "").lower(), parts.port)

    def _check_media_url(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if self._origin_of(url) == self._origin:
            return
        if parts.scheme == "https" and host.endswith(_MEDIA_HOST_SUFFIXES):
            return
        # Refuse rather than hand the bearer token to an unknown host.
        raise ValueError(f"refusing to send the access token to media host {host!r}")


def _seg(value: str) -> str:
    """A path segment from an id; ids are digits, so anything with a slash is a bug or an attack."""
    text = str(value)
    if not text or "/" in text or "?" in text or "#" in text or ".." in text:
        raise ValueError(f"invalid Graph object id {text!r}")
    return text


def _read_capped(response: requests.Response, cap: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(chunk_size=8192):
            chunks.append(chunk)
            total += len(chunk)
            if total >= cap:
                break
    except requests.RequestException:
        pass
    return b"".join(chunks)[:cap]


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _title_from(message: str) -> str:
    # WhatsApp errors read "(#131030) Recipient phone number not in allowed list".
    if message.startswith("(#") and ") " in message:
        return message.split(") ", 1)[1]
    return message


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the connection was never established, so nothing was sent."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if name in ("NewConnectionError", "NameResolutionError", "ConnectionRefusedError"):
            return True
        args = getattr(current, "args", ())
        reason = getattr(current, "reason", None)
        nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None:
            nxt = next((a for a in args if isinstance(a, BaseException)), None)
        current = nxt or current.__cause__ or current.__context__
    return False
