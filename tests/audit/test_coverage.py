"""Every service function that changes state writes an audit event (issue 12, item 4).

The functions are read from the source: every public function of the modules where state
changes live (each app's services, the outbound pipeline, the inbox screens and the commands
that write), whose body, or a function it calls, writes to the database. Each must reach
`record()` or `record_many()` (directly, or through a function that does, such as
`record_consent` or `fail_send`), or be listed below with the reason it writes no event. A
new writing function without an event fails here until it audits or says why not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "apps"

SOURCES = sorted(
    {
        *APPS.glob("*/services.py"),
        *(APPS / "conversations" / "outbound").glob("*.py"),
        *(APPS / "conversations" / "inbox").glob("*.py"),
        *APPS.glob("*/management/commands/*.py"),
        *APPS.glob("*/admin.py"),
    }
)

# Calls that write rows.
WRITES = {
    "create",
    "bulk_create",
    "bulk_update",
    "get_or_create",
    "update_or_create",
    "save",
    "delete",
}
# The calls that append audit events.
AUDITS = {"record", "record_many"}

# Writing functions that deliberately write no audit event, and why.
NOT_AUDITED = {
    # Bookkeeping of the inbox, not a security event (see its docstring).
    "mark_conversation_read": "reading resets an unread counter",
    # The outcome of each send is audited (queued, refused, accepted, failed); a retry is an
    # intermediate state of the same send, shown on the message.
    "retry_later": "a retry is a step of an audited send",
    "claim_batch": "lease bookkeeping of the dispatcher",
    "sweep_outbox": "wakes the dispatcher",
    # Media bookkeeping: the file's arrival and Meta's media id; deleting media is audited.
    "register_inbound_media": "records that Meta announced a file",
    "upload_outbound_media_to_meta": "stores Meta's media id of an audited send",
    "claim_meta_fetch": "marks a one-use link used",
    "public_fetch_url_for_meta": "mints the one-use link of an audited send",
}


def function_nodes(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def call_names(node: ast.AST) -> set[str]:
    names = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call):
            func = inner.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def writes_directly(node: ast.AST) -> bool:
    for inner in ast.walk(node):
        if not isinstance(inner, ast.Call) or not isinstance(inner.func, ast.Attribute):
            continue
        attr = inner.func.attr
        if attr in WRITES:
            return True
        # `.update(...)` on a queryset (a chain through objects/filter), not on a dict.
        if attr == "update":
            receiver = ast.unparse(inner.func.value)
            if ".objects" in receiver or ".filter(" in receiver or receiver.startswith("Q"):
                return True
    return False


def analyse():
    """name -> (writes, audits, module) for every function, closed over calls by name."""
    calls: dict[str, set[str]] = {}
    writes: dict[str, bool] = {}
    audits: dict[str, bool] = {}
    where: dict[str, str] = {}
    public: set[str] = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in function_nodes(tree):
            name = node.name
            calls[name] = calls.get(name, set()) | call_names(node)
            writes[name] = writes.get(name, False) or writes_directly(node)
            audits[name] = audits.get(name, False) or bool(AUDITS & call_names(node))
            where.setdefault(name, str(path.relative_to(ROOT)))
            if not name.startswith("_") or name == "handle":
                public.add(name)
    # Every other function of the apps may be called too (models' methods, other services).
    for path in sorted(APPS.rglob("*.py")):
        if "migrations" in path.parts or path in SOURCES:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in function_nodes(tree):
            calls.setdefault(node.name, call_names(node))
            writes.setdefault(node.name, writes_directly(node))
            audits.setdefault(node.name, bool(AUDITS & call_names(node)))
    for name in AUDITS:  # they are the audit events themselves
        audits[name] = True
    changed = True
    while changed:
        changed = False
        for name, callees in calls.items():
            known = [c for c in callees if c in calls]
            if not audits[name] and any(audits[c] for c in known):
                audits[name] = changed = True
            if not writes[name] and any(writes[c] for c in known if c not in NOT_AUDITED):
                writes[name] = changed = True
    return public, writes, audits, where


def test_every_state_changing_service_writes_an_audit_event():
    public, writes, audits, where = analyse()
    silent = sorted(
        f"{where[name]}: {name}"
        for name in public
        if writes[name] and not audits[name] and name not in NOT_AUDITED
    )
    assert silent == []


def test_it_finds_the_writers_it_should():
    public, writes, audits, _ = analyse()
    for name in ("queue_text_reply", "record_consent", "assign_conversation", "connect_number"):
        assert name in public and writes[name] and audits[name], name
    assert writes["mark_conversation_read"] and not audits["mark_conversation_read"]


def test_every_exemption_still_names_a_writing_function():
    _, writes, audits, _ = analyse()
    stale = sorted(n for n in NOT_AUDITED if not writes.get(n) or audits.get(n))
    assert stale == []


def test_the_analysis_sees_an_unaudited_writer(tmp_path):
    tree = ast.parse(
        "def set_thing(x):\n    Thing.objects.filter(pk=x).update(a=1)\n"
        "def settings_dict(d):\n    d.update(a=1)\n"
    )
    nodes = {n.name: n for n in function_nodes(tree)}
    assert writes_directly(nodes["set_thing"])
    assert not writes_directly(nodes["settings_dict"])
