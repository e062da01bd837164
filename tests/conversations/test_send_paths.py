"""No send path can bypass the gate. The send paths are enumerated from the source: only
`outbox.add_to_outbox_after_gate` creates outbound messages, only the dispatcher's
`dispatcher._perform` (the Graph call of `dispatch_one`, run in a pool thread by the concurrent
dispatcher) calls Meta's send endpoint, every public `queue_*` service calls `send_gate` before
`add_to_outbox_after_gate`, and the dispatcher
calls the gate before each Graph call (issue 4: "a test enumerates the send paths")."""

from __future__ import annotations

import ast
import inspect
import uuid
from pathlib import Path

import pytest

from apps.conversations.models import Message
from apps.conversations.outbound import dispatcher, outbox
from apps.conversations.outbound.gate import SendRefused
from apps.tenants.scoping import tenant_scope, unscoped

from .sim_fixtures import (  # noqa: F401 (fixtures)
    fast_password_hashing_fixture,
    graph_sends,
    make_conversation,
    make_template,
    outbound_messages,
    reload,
    sim_fixture,
)

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

APPS = Path(__file__).resolve().parents[2] / "apps"
CREATING_CALLS = {
    "create",
    "get_or_create",
    "update_or_create",
    "bulk_create",
    "Message",
    "update",
    "save",
}


def _source_files():
    for path in sorted(APPS.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        yield path, ast.parse(path.read_text(), filename=str(path))


def _enclosing_functions(tree):
    """Map every node to the name of the innermost function around it."""
    owner = {}

    def visit(node, name):
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else name
            )
            owner[child] = inner
            visit(child, inner)

    visit(tree, "<module>")
    return owner


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _chain(func: ast.AST) -> list[str]:
    """Names along a call's receiver: Message.objects.create -> [create, objects, Message]."""
    names = []
    while isinstance(func, ast.Attribute | ast.Call):
        if isinstance(func, ast.Call):
            func = func.func
            continue
        names.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        names.append(func.id)
    return names


def _makes_messages(call: ast.Call) -> bool:
    chain = _chain(call.func)
    if not chain:  # a call of a subscript or a call's result: no name to create messages by
        return False
    if chain == ["Message"]:  # Message(...), also inside bulk_create([...])
        return True
    return chain[0] in CREATING_CALLS and ("Message" in chain or "messages" in chain)


def _not_outbound(value: ast.AST) -> bool:
    """Explicitly inbound or a note; anything else (OUTBOUND, "out", a variable) counts."""
    if isinstance(value, ast.Attribute):
        return value.attr in ("INBOUND", "NOTE")
    return isinstance(value, ast.Constant) and value.value in ("in", "note")


def test_it_finds_outbound_messages_created_only_in_the_outbox_queue():
    creators = []
    for path, tree in _source_files():
        owner = _enclosing_functions(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _makes_messages(node):
                continue
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            defaults = keywords.get("defaults")
            if isinstance(defaults, ast.Dict):  # get_or_create(defaults={"direction": ...})
                for key, value in zip(defaults.keys, defaults.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "direction":
                        keywords["direction"] = value
            if "direction" in keywords and not _not_outbound(keywords["direction"]):
                creators.append((str(path.relative_to(APPS.parent)), owner[node]))
    assert creators == [("apps/conversations/outbound/outbox.py", "add_to_outbox_after_gate")]


def test_it_finds_metas_send_endpoint_called_only_by_the_dispatcher():
    callers = []
    for path, tree in _source_files():
        owner = _enclosing_functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) == "send_message":
                callers.append((str(path.relative_to(APPS.parent)), owner[node]))
    assert callers == [("apps/conversations/outbound/dispatcher.py", "_perform")]


def test_it_calls_the_gate_before_queueing_in_the_source_of_every_queue_function():
    tree = ast.parse(inspect.getsource(outbox))
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("queue_")
    }
    assert functions, "no queue_* functions found"
    for name, node in functions.items():
        calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
        gate = [n.lineno for n in calls if _call_name(n) == "send_gate"]
        queue = [n.lineno for n in calls if _call_name(n) == "add_to_outbox_after_gate"]
        assert gate and queue, f"{name} must call send_gate and add_to_outbox_after_gate"
        assert min(gate) < min(queue), f"{name} queues before asking the gate"


def _queue_calls(conversation, template, owner):
    """How to call each public queue_* function; a new one must be added here."""
    return {
        "queue_text_reply": lambda: outbox.queue_text_reply(conversation, "Hi", actor=owner),
        "queue_template": lambda: outbox.queue_template(
            conversation, template, ["A-1"], actor=owner
        ),
        "queue_opt_out_confirmation": lambda: outbox.queue_opt_out_confirmation(
            conversation, uuid.uuid4()
        ),
    }


def _public_queue_functions():
    return sorted(
        name
        for name, obj in vars(outbox).items()
        if name.startswith("queue_")
        and inspect.isfunction(obj)
        and obj.__module__ == outbox.__name__
    )


def test_it_makes_every_queue_function_stop_when_the_gate_refuses(sim, acme, monkeypatch):
    conversation = make_conversation(acme)
    template = make_template(acme, sim=sim)
    calls = []

    def refusing_gate(conversation, **kwargs):
        calls.append(kwargs["path"])
        raise SendRefused("probe", "refused by the probe")

    monkeypatch.setattr(outbox, "send_gate", refusing_gate)
    known = _queue_calls(conversation, template, acme.owner)
    assert _public_queue_functions() == sorted(known), "a new send path needs a gate test"
    for name, call in known.items():
        with tenant_scope(acme.tenant):
            if name == "queue_opt_out_confirmation":
                assert call() is None  # automatic: a refusal is swallowed, never queued
            else:
                with pytest.raises(SendRefused):
                    call()
    assert len(calls) == len(known)
    assert outbound_messages(acme) == []
    dispatcher.dispatch_outbox(time_budget=1)
    assert graph_sends(sim) == []


def test_it_calls_the_gate_before_every_graph_call_of_the_dispatcher(sim, acme, monkeypatch):
    conversation = make_conversation(acme)
    template = make_template(acme, sim=sim)
    with tenant_scope(acme.tenant):
        messages = [
            outbox.queue_text_reply(conversation, "one", actor=acme.owner),
            outbox.queue_template(conversation, template, ["A-2"], actor=acme.owner),
            outbox.queue_opt_out_confirmation(conversation, uuid.uuid4()),
        ]
    real_gate = dispatcher.send_gate
    seen = []

    def witnessing_gate(conversation, **kwargs):
        seen.append((kwargs["path"], kwargs["kind"], len(graph_sends(sim))))
        return real_gate(conversation, **kwargs)

    monkeypatch.setattr(dispatcher, "send_gate", witnessing_gate)
    assert dispatcher.dispatch_outbox(time_budget=5) == 3
    # One gate call per message, each before that message's Graph call.
    assert seen == [
        ("dispatch", "free_form", 0),
        ("dispatch", "template", 1),
        ("dispatch", "opt_out_confirmation", 2),
    ]
    assert len(graph_sends(sim)) == 3
    assert all(reload(m).status == "accepted" for m in messages)


def test_it_sends_nothing_when_the_gate_refuses_at_dispatch(sim, acme, monkeypatch):
    conversation = make_conversation(acme)
    with tenant_scope(acme.tenant):
        message = outbox.queue_text_reply(conversation, "one", actor=acme.owner)

    def refusing_gate(conversation, **kwargs):
        raise SendRefused("probe", "refused by the probe")

    monkeypatch.setattr(dispatcher, "send_gate", refusing_gate)
    dispatcher.dispatch_outbox(time_budget=1)
    assert graph_sends(sim) == []
    assert reload(message).status == "failed"


def test_it_never_sends_an_internal_note(sim, acme):
    conversation = make_conversation(acme)
    with tenant_scope(acme.tenant):
        note = outbox.add_internal_note(conversation, "Customer is a VIP", actor=acme.owner)
    dispatcher.dispatch_outbox(time_budget=1)
    assert graph_sends(sim) == []
    with unscoped("test"):
        assert Message.objects.get(pk=note.pk).status == "note"
