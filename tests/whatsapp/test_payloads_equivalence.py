"""Pin what ``parse_notification`` returns or raises over a wide corpus of bodies.

``payloads_snapshot.json`` freezes the base bodies (the fixtures of ``test_payloads.py``,
bodies the simulator posts, odd encodings and non-JSON) and, for every case, the result the
parser gave: the :class:`PayloadError` message, or a digest of the parsed objects. The digest
covers every dataclass field, including the ``raw`` ones left out of ``repr``, and the exact
type of every value, so two results digest alike only if they compare equal with the same types.

Besides each base body, the cases are every variant with one key dropped or one value (object,
list or scalar, at any depth) replaced by a value of another type; bodies stored with
``"variants": false`` repeat shapes covered elsewhere and are checked as given only.

After a deliberate change of behaviour, and only then, rewrite the recorded results with::

    .venv/bin/python -m tests.whatsapp.test_payloads_equivalence
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from apps.whatsapp.payloads import parse_notification

SNAPSHOT = Path(__file__).with_name("payloads_snapshot.json")

# Every value in the tree is replaced by each of these in turn (and every key is dropped).
REPLACEMENTS: tuple[Any, ...] = (None, 1, "x", [], {}, True, 1.5, "", 0, False, "123")
ARABIC_DIGITS = "\u0661\u0662\u0663"  # str.isdigit() is true, str.isascii() is not
# Values that reach the parser's less common branches, tried only under these keys.
KEY_REPLACEMENTS: dict[str, tuple[Any, ...]] = {
    "timestamp": (-1, 2.0, 10**20, "-1", " 1", ARABIC_DIGITS, "99999999999999999999", "9" * 5000),
    "time": (-1, 10**20, "1767226000"),
    "code": ("-1", " 1", ARABIC_DIGITS, 2**70),
    "type": ("contacts", "id", "context", "errors", "timestamp", "edit"),
    "field": (
        "messages",
        "user_preferences",
        "smb_message_echoes",
        "message_template_status_update",
        "account_update",
    ),
    "error_data": ("plain details", {"details": 5}, {"details": None}, {"details": ["d"]}),
    "message_template_id": ("abc", 1.5, False),
    "message_template_language": ("pt-BR", "en_US", 5),
    "profile": ({"name": 5, "username": None}, {"name": "", "username": "@u"}),
    "context": ({"referred_product": []}, {"forwarded": "true", "frequently_forwarded": 1}),
    "errors": ([{}], [None], [{"code": "7", "message": "m"}], [{"title": "", "message": ""}]),
}
# Objects the parser passes through whole (as is a message's content, under its ``type``).
OPAQUE_KEYS = frozenset(
    {"pricing", "conversation", "referral", "referred_product", "rejection_info", "other_info"}
)
# Inputs that are not bytes of a JSON document.
ODD_INPUTS: dict[str, Any] = {
    "None": None,
    "an int": 1,
    "a float": 1.5,
    "a list": [],
    "a bytearray": bytearray(b'{"object":"whatsapp_business_account","entry":[]}'),
    "JSON nested too deep": b"[" * 100_000 + b"]" * 100_000,
}


# --------------------------------------------------------------------------------------------
# Results


_JSON_SCALARS = (str, int, float, bool, type(None))


def canonical(value: Any, seen: dict[int, Any] | None = None) -> Any:
    """A JSON-able form of ``value`` that keeps every field and the type of every value.

    Plain str/int/float/bool/None stay themselves: JSON already tells ``1``, ``1.0``, ``true``
    and ``"1"`` apart. Everything else is tagged with its type. ``seen`` maps the ids of
    containers already converted (``raw`` objects share most of their content) to their form.
    """
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if seen is None:
        seen = {}
    form = seen.get(id(value))
    if form is not None:
        return form
    if kind is dict:
        form = {"dict": [[canonical(k, seen), canonical(v, seen)] for k, v in value.items()]}
    elif kind is list or kind is tuple:
        form = {kind.__name__: [canonical(v, seen) for v in value]}
    elif dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        form = {kind.__name__: {f.name: canonical(getattr(value, f.name), seen) for f in fields}}
    elif kind is datetime:
        form = {"datetime": [value.isoformat(), repr(value.tzinfo)]}
    else:
        form = {kind.__name__: repr(value)}
    seen[id(value)] = form
    return form


def result_of(body: Any) -> str:
    """``ok <digest>``, ``PayloadError: <message>`` or ``<OtherError>: <message>``."""
    try:
        notification = parse_notification(body)
    except Exception as exc:  # every outcome is pinned, the unexpected ones too
        return f"{type(exc).__name__}: {exc}"
    dump = json.dumps(canonical(notification), ensure_ascii=True, separators=(",", ":"))
    return "ok " + hashlib.sha256(dump.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Corpus


def decode_body(stored: dict[str, str]) -> bytes | str:
    if "text" in stored:
        return stored["text"].encode()
    if "str" in stored:
        return stored["str"]
    return base64.b64decode(stored["base64"])


def _label(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of ``node`` and of everything in it the parser looks inside."""
    yield path
    if isinstance(node, dict):
        for key, child in node.items():
            # The parser keeps these whole without reading them: replacing them is enough.
            if key not in OPAQUE_KEYS and key != node.get("type"):
                yield from _paths(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*path, index))


def _path_text(path: tuple[Any, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return text.lstrip(".") or "body"


_DROP = object()


def _variant(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``data`` with the value at ``path`` replaced (or, for ``_DROP``, its key removed).

    Changes ``data`` in place and puts it back once serialised, keeping key order intact.
    """
    if not path:
        return json.dumps(value, ensure_ascii=False).encode()
    *parents, last = path
    node = data
    for p in parents:
        node = node[p]
    if value is _DROP:
        return _variant(data, tuple(parents), {k: v for k, v in node.items() if k != last})
    original = node[last]
    node[last] = value
    try:
        return json.dumps(data, ensure_ascii=False).encode()
    finally:
        node[last] = original


def cases(stored: dict[str, str]) -> Iterator[tuple[str, str, Any]]:
    """``(where, what, body)``: the body as given, then its variants."""
    body = decode_body(stored)
    yield "body", "as given", body
    if not stored.get("variants", True):
        return
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return
    if isinstance(body, bytes) and body.isascii():
        yield "body", "as str", body.decode()
    for path in _paths(data):
        where = _path_text(path)
        key = path[-1] if path else None
        if isinstance(key, str):
            yield where, "dropped", _variant(data, path, _DROP)
        extra = KEY_REPLACEMENTS.get(key, ()) if isinstance(key, str) else ()
        for value in (*REPLACEMENTS, *extra):
            yield where, f"= {_label(value)}", _variant(data, path, value)


def results_for(stored: dict[str, str]) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    for where, what, body in cases(stored):
        results.setdefault(where, {})[what] = result_of(body)
    return results


def load_snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Tests

_snapshot = load_snapshot()


@pytest.mark.parametrize("name", sorted(_snapshot["bodies"]))
def test_results_match_the_snapshot(name):
    expected = _snapshot["results"][name]
    actual = results_for(_snapshot["bodies"][name])
    assert actual.keys() == expected.keys()
    changed = [
        f"{where} {what}\n  was: {was}\n  now: {actual[where].get(what)}"
        for where, results in expected.items()
        for what, was in results.items()
        if actual[where].get(what) != was
    ]
    total = sum(len(results) for results in expected.values())
    assert not changed, f"{len(changed)} of {total} results changed:\n" + "\n".join(changed[:20])


@pytest.mark.parametrize("name", sorted(ODD_INPUTS))
def test_odd_inputs_match_the_snapshot(name):
    assert result_of(ODD_INPUTS[name]) == _snapshot["odd_inputs"][name]


def test_the_digest_tells_types_apart():
    # The digest is only as strong as canonical(): it must tell apart what == tells apart.
    forms = [canonical(v) for v in ({"a": 1}, {"a": True}, {"a": 1.0}, {"a": "1"}, ("a",), ["a"])]
    dumps = {json.dumps(form) for form in forms}
    assert len(dumps) == len(forms)
    assert result_of(b'{"object":"whatsapp_business_account","entry":[]}').startswith("ok ")


if __name__ == "__main__":
    _snapshot["results"] = {name: results_for(body) for name, body in _snapshot["bodies"].items()}
    _snapshot["odd_inputs"] = {name: result_of(value) for name, value in ODD_INPUTS.items()}
    SNAPSHOT.write_text(
        json.dumps(_snapshot, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    count = sum(len(r) for b in _snapshot["results"].values() for r in b.values())
    print(f"wrote {count} results to {SNAPSHOT}")
