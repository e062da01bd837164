"""The simulator's sending rules, like Meta: the 24-hour window (131047), marketing opt-outs
(131050), throughput (130429), token checks (190) on every endpoint, and the stats."""

import json
import time

import pytest
import requests

from apps.whatsapp.graph import GraphClient, GraphError
from apps.whatsapp.payloads import parse_notification
from apps.whatsapp.simulator import Fault, MetaSimulator
from apps.whatsapp.testing import DEMO_NUMBER, OTHER_NUMBER, running_simulator

PNID = DEMO_NUMBER.phone_number_id
CUSTOMER = "15551234567"
TEXT = {"to": "+15551234567", "type": "text", "text": {"body": "Hi"}}
DAY = 24 * 3600


def statuses_of(posts):
    out = []
    for post in posts:
        for _change, status in parse_notification(post.body).statuses():
            out.append(status)
    return out


def control(sim, method, route, body=None, params=None):
    response = requests.request(
        method, f"{sim.url}/_sim/{route}", json=body, params=params, timeout=10
    )
    return response.status_code, response.json()


def template(name):
    tpl = {"name": name, "language": {"code": "en_US"}}
    return {"to": "+15551234567", "type": "template", "template": tpl}


@pytest.fixture
def rules(sim):
    """The conftest simulator with the 24-hour window enforced and two templates."""
    sim.configure(enforce_window=True)
    sim.set_templates(
        DEMO_NUMBER.waba_id,
        [{"name": "promo", "category": "MARKETING"}, {"name": "receipt", "category": "UTILITY"}],
    )
    return sim


def settle(sim, hooks):
    """Every status webhook posted so far, after the simulator went idle."""
    assert sim.wait_idle()
    return statuses_of(hooks.posts)


def outbound_statuses(sim, hooks, wamid):
    return [s for s in settle(sim, hooks) if s.wamid == wamid]


# ------------------------------------------------------------------ defaults


def test_the_window_is_off_for_tests_and_on_for_the_command(monkeypatch):
    assert MetaSimulator().config()["enforce_window"] is False
    with running_simulator() as sim:
        config = sim.config()
    assert config["enforce_window"] is False
    assert config["enforce_opt_out"] is True
    assert config["rate_limit_per_second"] == 80
    assert config["window_seconds"] == DAY

    from django.core.management import call_command

    seen = {}

    def fake_serve(self):
        seen.update(self.config())
        self.stop()

    monkeypatch.setattr(MetaSimulator, "serve_until_interrupted", fake_serve)
    call_command("meta_simulator", "--port", "0")
    assert seen["enforce_window"] is True and seen["rate_limit_per_second"] == 80
    seen.clear()
    call_command("meta_simulator", "--port", "0", "--no-enforce-window", "--rate-limit", "0")
    assert seen["enforce_window"] is False and seen["rate_limit_per_second"] == 0


def test_the_rules_are_configurable_through_the_control_api(sim):
    status, config = control(
        sim,
        "POST",
        "config",
        {"enforce_window": True, "rate_limit_per_second": 5, "window_seconds": 60},
    )
    assert status == 200
    assert (config["enforce_window"], config["rate_limit_per_second"]) == (True, 5)
    assert config["window_seconds"] == 60
    assert control(sim, "POST", "config", {"enforce_window": "yes"})[0] == 400
    assert control(sim, "POST", "config", {"rate_limit_per_second": -1})[0] == 400
    assert control(sim, "POST", "config", {"window_seconds": 0})[0] == 400


# ------------------------------------------------------------------ 24-hour window


def test_a_reply_inside_the_window_is_delivered(rules, client, hooks):
    control(rules, "POST", "inbound", {"phone_number_id": PNID, "from": CUSTOMER})
    result = client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "m-1"})
    assert [s.status for s in outbound_statuses(rules, hooks, result.wamid)] == [
        "sent",
        "delivered",
        "read",
    ]
    window = rules.window(PNID, "+1 555 123 4567")
    assert window["open"] is True and window["expires_at"] == window["last_inbound_at"] + DAY


def test_free_form_without_any_inbound_fails_with_131047(rules, client, hooks):
    result = client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "m-2"})
    assert result.wamid.startswith("wamid.")  # accepted, as Meta usually does
    assert rules.wait_idle()
    (post,) = hooks.posts
    (failed,) = statuses_of([post])
    assert (failed.wamid, failed.status) == (result.wamid, "failed")
    assert failed.biz_opaque_callback_data == "m-2"
    assert failed.recipient_id == CUSTOMER
    error = failed.errors[0]
    assert (error.code, error.title) == (131047, "Re-engagement message")
    assert error.details == (
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number."
    )
    value = json.loads(post.body)["entry"][0]["changes"][0]["value"]
    assert "contacts" not in value and "pricing" not in value["statuses"][0]


def test_free_form_after_the_window_closed_fails(rules, client, hooks):
    status, window = control(
        rules,
        "POST",
        "window",
        {"phone_number_id": PNID, "customer": CUSTOMER, "last_inbound_at": time.time() - 25 * 3600},
    )
    assert status == 200 and window["open"] is False
    closed = client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "late"})
    (failed,) = outbound_statuses(rules, hooks, closed.wamid)
    assert failed.status == "failed" and failed.errors[0].code == 131047
    assert failed.biz_opaque_callback_data == "late"

    # 23 hours ago: still open. Null: never opened.
    control(
        rules,
        "POST",
        "window",
        {"phone_number_id": PNID, "customer": CUSTOMER, "last_inbound_at": time.time() - 23 * 3600},
    )
    inside = client.send_message(PNID, TEXT)
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, inside.wamid)]
    status, window = control(
        rules,
        "POST",
        "window",
        {"phone_number_id": PNID, "customer": CUSTOMER, "last_inbound_at": None},
    )
    assert window["last_inbound_at"] is None and window["open"] is False
    again = client.send_message(PNID, TEXT)
    assert [s.status for s in outbound_statuses(rules, hooks, again.wamid)] == ["failed"]


def test_an_inbound_is_dated_by_its_own_timestamp(rules, client, hooks):
    rules.inbound({"phone_number_id": PNID, "from": CUSTOMER, "timestamp": time.time() - 25 * 3600})
    old = client.send_message(PNID, TEXT)
    assert [s.status for s in outbound_statuses(rules, hooks, old.wamid)] == ["failed"]
    # A forged or undelivered inbound is not the customer writing.
    rules.inbound({"phone_number_id": PNID, "from": CUSTOMER, "deliver": False})
    rules.inbound({"phone_number_id": PNID, "from": CUSTOMER, "signature": "sha256=" + "0" * 64})
    assert rules.window(PNID, CUSTOMER)["open"] is False


def test_the_window_is_per_number_and_per_customer(rules, client, hooks):
    rules.inbound({"phone_number_id": PNID, "from": CUSTOMER})
    other_customer = client.send_message(PNID, {**TEXT, "to": "15559990000"})
    other_number = GraphClient(rules.graph_url(), OTHER_NUMBER.token).send_message(
        OTHER_NUMBER.phone_number_id, TEXT
    )
    statuses = settle(rules, hooks)
    for wamid in (other_customer.wamid, other_number.wamid):
        assert [s.status for s in statuses if s.wamid == wamid] == ["failed"]


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("image", {"id": "123"}),
        ("interactive", {"type": "button", "body": {"text": "Pick"}}),
        ("location", {"latitude": 1.0, "longitude": 2.0}),
        ("contacts", {"contacts": []}),
        ("reaction", {"message_id": "wamid.X", "emoji": "👍"}),
    ],
)
def test_every_non_template_type_needs_the_window(rules, client, hooks, msg_type, content):
    result = client.send_message(
        PNID, {"to": CUSTOMER, "type": msg_type, msg_type: content, "biz_opaque_callback_data": "x"}
    )
    (failed,) = outbound_statuses(rules, hooks, result.wamid)
    assert failed.status == "failed" and failed.errors[0].code == 131047
    assert failed.biz_opaque_callback_data == "x"


def test_templates_are_allowed_outside_the_window(rules, client, hooks):
    result = client.send_message(PNID, {**template("receipt"), "biz_opaque_callback_data": "t"})
    statuses = outbound_statuses(rules, hooks, result.wamid)
    assert [s.status for s in statuses] == ["sent", "delivered", "read"]
    assert all(s.biz_opaque_callback_data == "t" for s in statuses)


def test_username_customers_open_the_window_by_user_id(rules, client, hooks):
    rules.inbound({"phone_number_id": PNID, "user_id": "US.1349", "hide_phone": True})
    result = client.send_message(
        PNID, {"recipient": "US.1349", "type": "text", "text": {"body": "Hi"}}
    )
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, result.wamid)]


def test_the_window_error_can_be_synchronous(rules, client):
    rules.configure(window_sync_error=True)
    with pytest.raises(GraphError) as excinfo:
        client.send_message(PNID, TEXT)
    assert (excinfo.value.http_status, excinfo.value.code) == (400, 131047)
    assert rules.sent_messages() == []


def test_an_injected_async_fault_wins_over_the_window(rules, client, hooks):
    rules.add_fault(Fault(PNID, code=131026, async_=True))
    result = client.send_message(PNID, TEXT)
    (failed,) = outbound_statuses(rules, hooks, result.wamid)
    assert failed.errors[0].code == 131026


# ------------------------------------------------------------------ marketing opt-out


def test_a_stop_blocks_marketing_but_not_utility_until_resume(rules, client, hooks):
    status, _ = control(
        rules,
        "POST",
        "user_preferences",
        {"phone_number_id": PNID, "wa_id": CUSTOMER, "value": "stop"},
    )
    assert status == 200 and rules.window(PNID, CUSTOMER)["opted_out_marketing"] is True
    promo = client.send_message(PNID, {**template("promo"), "biz_opaque_callback_data": "p-1"})
    receipt = client.send_message(PNID, template("receipt"))
    (failed,) = outbound_statuses(rules, hooks, promo.wamid)
    assert failed.status == "failed" and failed.biz_opaque_callback_data == "p-1"
    assert failed.errors[0].code == 131050
    assert "stopped marketing messages" in failed.errors[0].details
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, receipt.wamid)]

    control(
        rules,
        "POST",
        "user_preferences",
        {"phone_number_id": PNID, "wa_id": CUSTOMER, "value": "resume"},
    )
    again = client.send_message(PNID, template("promo"))
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, again.wamid)]


def test_opt_out_can_be_set_without_a_webhook(rules, client, hooks):
    status, state = control(
        rules,
        "POST",
        "opt_out",
        {"phone_number_id": PNID, "customer": "+15551234567", "value": "stop"},
    )
    assert status == 200 and state["opted_out_marketing"] is True
    assert hooks.posts == []  # no user_preferences webhook
    promo = client.send_message(PNID, template("promo"))
    assert [s.status for s in outbound_statuses(rules, hooks, promo.wamid)] == ["failed"]
    control(
        rules, "POST", "opt_out", {"phone_number_id": PNID, "customer": CUSTOMER, "value": "resume"}
    )
    promo = client.send_message(PNID, template("promo"))
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, promo.wamid)]
    assert (
        control(
            rules, "POST", "opt_out", {"phone_number_id": PNID, "customer": CUSTOMER, "value": "x"}
        )[0]
        == 400
    )


def test_opt_out_enforcement_can_be_switched_off(rules, client, hooks):
    rules.set_opt_out(PNID, CUSTOMER, "stop")
    rules.configure(enforce_opt_out=False)
    promo = client.send_message(PNID, template("promo"))
    assert "delivered" in [s.status for s in outbound_statuses(rules, hooks, promo.wamid)]


# ------------------------------------------------------------------ throughput


def test_sends_above_the_rate_get_130429(sim, client):
    sim.configure(rate_limit_per_second=5, statuses=["sent"])
    outcomes = []
    for i in range(81):
        try:
            client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": f"r-{i}"})
            outcomes.append(200)
        except GraphError as exc:
            assert (exc.http_status, exc.code) == (400, 130429)
            assert exc.retryable
            outcomes.append(exc.code)
    assert 130429 in outcomes
    assert outcomes[:5] == [200] * 5  # the first five always fit
    rejected = [r for r in sim.requests(PNID) if r["status"] == 400]
    error = rejected[0]["response"]["error"]
    assert error["message"] == "(#130429) Rate limit hit" and error["fbtrace_id"]
    assert error["error_data"]["messaging_product"] == "whatsapp"
    stats = sim.stats()[PNID]
    assert stats["accepted"] == outcomes.count(200) == len(sim.sent_messages())
    assert stats["rejected"] == {"130429": outcomes.count(130429)}
    time.sleep(1.05)  # a rolling second later there is room again
    assert client.send_message(PNID, TEXT).wamid


def test_only_accepted_sends_count_towards_the_rate(sim, client):
    sim.configure(rate_limit_per_second=2)
    for _ in range(3):
        with pytest.raises(GraphError) as excinfo:
            client.send_message(PNID, template("no-such-template"))
        assert excinfo.value.code == 132001
    assert client.send_message(PNID, TEXT).wamid
    assert client.send_message(PNID, TEXT).wamid
    # The other number has its own budget.
    other = GraphClient(sim.graph_url(), OTHER_NUMBER.token)
    assert other.send_message(OTHER_NUMBER.phone_number_id, TEXT).wamid


def test_the_rate_limit_can_be_switched_off(sim, client):
    sim.configure(rate_limit_per_second=0, statuses=["sent"])
    for _ in range(20):
        assert client.send_message(PNID, TEXT).wamid


# ------------------------------------------------------------------ tokens (190)


def bad(sim, token="not-a-token"):
    return GraphClient(sim.graph_url(), token, timeout=(2, 5))


def assert_190(call):
    with pytest.raises(GraphError) as excinfo:
        call()
    assert (excinfo.value.http_status, excinfo.value.code) == (401, 190)
    assert excinfo.value.token_invalid


def test_every_graph_endpoint_checks_the_token(sim, client):
    media_id = client.upload_media(PNID, b"\x89PNG fake", "image/png", "a.png")
    url = client.get_media(media_id).url
    sim.set_templates(DEMO_NUMBER.waba_id, [{"name": "receipt"}])
    for token in ("not-a-token", OTHER_NUMBER.token):  # unknown, and another number's
        wrong = bad(sim, token)
        assert_190(lambda w=wrong: w.send_message(PNID, TEXT))
        assert_190(lambda w=wrong: w.mark_read(PNID, "wamid.X"))
        assert_190(lambda w=wrong: w.upload_media(PNID, b"x", "image/png", "b.png"))
        assert_190(lambda w=wrong: w.get_media(media_id))
        assert_190(lambda w=wrong: w.delete_media(media_id))
        assert_190(lambda w=wrong: w.list_message_templates(DEMO_NUMBER.waba_id))
    response = requests.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=5)
    assert response.status_code == 401 and response.json()["error"]["code"] == 190
    response = requests.post(f"{sim.graph_url()}/{PNID}/messages", json=TEXT, timeout=5)
    assert response.status_code == 401 and response.json()["error"]["code"] == 190
    assert client.download_media(url) == b"\x89PNG fake"  # the right token still works
    assert sim.sent_messages() == []
    stats = sim.stats()[PNID]
    assert stats["accepted"] == 0 and stats["rejected"] == {"190": 3}


# ------------------------------------------------------------------ stats and callback data


def test_stats_count_sends_rejections_failures_and_webhooks(rules, client, hooks):
    rules.inbound({"phone_number_id": PNID, "from": CUSTOMER})
    client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "dup"})
    client.send_message(PNID, {**TEXT, "biz_opaque_callback_data": "dup"})
    client.send_message(PNID, {**TEXT, "to": "15550000000", "biz_opaque_callback_data": "once"})
    client.mark_read(PNID, "wamid.IN")
    rules.add_fault(Fault(PNID, code=131026))
    with pytest.raises(GraphError):
        client.send_message(PNID, TEXT)
    assert rules.wait_idle()
    status, body = control(rules, "GET", "stats")
    assert status == 200
    stats = body["data"][PNID]
    assert stats["accepted"] == 3 and stats["reads"] == 1
    assert stats["rejected"] == {"131026": 1} and stats["rejected_total"] == 1
    assert stats["failed"] == {"131047": 1}
    assert stats["webhooks"]["posted"] == 1 + 3 + 3 + 1  # inbound + 2x3 statuses + 1 failed
    assert stats["webhooks"]["ok"] == stats["webhooks"]["posted"]
    assert stats["webhooks"]["by_kind"] == {"inbound": 1, "statuses": 7}
    assert stats["callback_data_repeated"] == {"dup": 2}
    assert "callback_data" not in stats
    _status, body = control(
        rules, "GET", "stats", params={"callback_data": "1", "phone_number_id": PNID}
    )
    assert body["data"][PNID]["callback_data"] == {"dup": 2, "once": 1}

    _status, body = control(rules, "GET", "requests", params={"biz_opaque_callback_data": "dup"})
    assert len(body["data"]) == 2 and all(r["status"] == 200 for r in body["data"])
    _status, body = control(rules, "GET", "sent", params={"biz_opaque_callback_data": "once"})
    assert [m["to"] for m in body["data"]] == ["15550000000"]

    assert control(rules, "DELETE", "stats")[0] == 200
    assert control(rules, "GET", "stats")[1]["data"] == {}


def test_window_control_errors_are_clear(sim):
    assert control(sim, "POST", "window", {"phone_number_id": PNID, "customer": CUSTOMER})[0] == 400
    assert (
        control(
            sim,
            "POST",
            "window",
            {"phone_number_id": PNID, "customer": CUSTOMER, "last_inbound_at": "yesterday"},
        )[0]
        == 400
    )
    assert (
        control(
            sim,
            "POST",
            "window",
            {"phone_number_id": "nope", "customer": "1", "last_inbound_at": None},
        )[0]
        == 400
    )
    status, state = control(
        sim, "GET", "window", params={"phone_number_id": PNID, "customer": CUSTOMER}
    )
    assert status == 200 and state["open"] is False and state["customer"] == CUSTOMER
