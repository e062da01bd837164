"""Consent keywords: a whole message of STOP (case, spaces and punctuation tolerant) opts out,
START opts back in, a message that merely contains the word does nothing, and a tenant's own
words (PARAR, DETENER, ABMELDEN) work for that tenant only (issue 4, test plan E1)."""

from __future__ import annotations

import pytest

from apps.consent.models import ConsentKind, ConsentScope, ConsentSource, KeywordRule
from apps.consent.services import match_keyword, normalise_keyword
from apps.tenants.scoping import tenant_scope
from tests.conversations.sim_fixtures import fast_password_hashing_fixture  # noqa: F401 (fixture)

OPT_OUTS = [
    "STOP",
    " stop.",
    "Stop!",
    "STOPALL",
    "Unsubscribe",
    "CANCEL",
    "END",
    "QUIT",
    "OPT OUT",
    "opt-out",
    "s t o p",
    "\tStop\n",
    "STOP 🛑",
    "Opt_Out",
]
OPT_INS = ["START", "unstop", "Start.", " UNSTOP! "]
# Decision: only the whole message counts. Anything with more words than the keyword is a
# conversation, not an instruction.
NEAR_MISSES = [
    "please don't stop",
    "stopped",
    "stop it now",
    "unsubscribe me please",
    "Don't STOP",
    "stopp",
    "sto",
    "cancel my order",
    "the end",
    "I want to opt out",
    "starting",
    "restart",
    "",
    "   ",
    "!!!",
    "stop " * 10,
]


@pytest.mark.parametrize("text", OPT_OUTS)
def test_it_reads_a_whole_message_keyword_as_an_opt_out(text):
    assert match_keyword(text, tenant_rules=[]) == ConsentKind.OPT_OUT


@pytest.mark.parametrize("text", OPT_INS)
def test_it_reads_start_and_unstop_as_an_opt_in(text):
    assert match_keyword(text, tenant_rules=[]) == ConsentKind.OPT_IN


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_it_ignores_messages_that_merely_contain_a_keyword(text):
    assert match_keyword(text, tenant_rules=[]) is None


def test_it_normalises_case_accents_spaces_and_punctuation():
    assert normalise_keyword(" Opt-Out! ") == "optout"
    assert normalise_keyword("DÉTENER") == "detener"
    assert normalise_keyword("Abmélden.") == "abmelden"


@pytest.fixture
def acme_words(fast_password_hashing, acme):
    with tenant_scope(acme.tenant):
        for word, kind, language in [
            ("PARAR", ConsentKind.OPT_OUT, "pt"),
            ("DETENER", ConsentKind.OPT_OUT, "es"),
            ("ABMELDEN", ConsentKind.OPT_OUT, "de"),
            ("Anmelden", ConsentKind.OPT_IN, "de"),
        ]:
            KeywordRule.objects.create(tenant=acme.tenant, word=word, kind=kind, language=language)
    return acme


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PARAR", ConsentKind.OPT_OUT),
        ("parar", ConsentKind.OPT_OUT),
        (" Parar! ", ConsentKind.OPT_OUT),
        ("Detén", None),
        ("détener", ConsentKind.OPT_OUT),
        ("DETENER.", ConsentKind.OPT_OUT),
        ("Abmelden", ConsentKind.OPT_OUT),
        ("anmelden", ConsentKind.OPT_IN),
        ("por favor parar", None),
        ("STOP", ConsentKind.OPT_OUT),  # the built-in words keep working
    ],
)
def test_it_honours_a_tenants_own_keywords_case_and_accent_tolerant(acme_words, text, expected):
    with tenant_scope(acme_words.tenant):
        assert match_keyword(text) == expected


def test_it_does_not_apply_one_tenants_keywords_to_another(acme_words, bravo):
    with tenant_scope(bravo.tenant):
        assert match_keyword("PARAR") is None
        assert match_keyword("ABMELDEN") is None
        assert match_keyword("STOP") == ConsentKind.OPT_OUT


def test_it_records_a_tenant_keyword_from_an_inbound_message_for_that_tenant_only(
    acme_words, bravo, client
):
    from apps.consent.models import ConsentEvent
    from tests.conversations.payload_builders import deliver, text_body

    for world in (acme_words, bravo):
        body, _ = text_body(world, "Parar")
        deliver(client, world, body)
    with tenant_scope(acme_words.tenant):
        acme_events = list(ConsentEvent.objects.all())
    with tenant_scope(bravo.tenant):
        bravo_events = list(ConsentEvent.objects.all())
    assert [(e.kind, e.scope, e.source) for e in acme_events] == [
        (ConsentKind.OPT_OUT, ConsentScope.ALL, ConsentSource.KEYWORD)
    ]
    assert acme_events[0].evidence["text"] == "Parar"
    assert bravo_events == []
