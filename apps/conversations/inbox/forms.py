"""Forms of the inbox: replies, templates, notes, assignment, consent and keyword rules.

They only parse and validate input; the services decide (the send gate, consent rules)."""

from __future__ import annotations

from django import forms

from apps.consent.models import ConsentKind, ConsentScope, KeywordRule
from apps.consent.services import normalise_keyword

from ..outbound.outbox import MAX_TEXT_LENGTH

NOBODY = ""


class ReplyForm(forms.Form):
    body = forms.CharField(
        label="Reply",
        max_length=MAX_TEXT_LENGTH,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Write a reply…"}),
        error_messages={"required": "Write a message first."},
    )
    quote = forms.UUIDField(required=False, widget=forms.HiddenInput)


class NoteForm(forms.Form):
    text = forms.CharField(
        label="Internal note",
        max_length=MAX_TEXT_LENGTH,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Only your colleagues see this"}),
        error_messages={"required": "Write a note first."},
    )


class AssignForm(forms.Form):
    assignee = forms.ChoiceField(label="Assigned to", required=False)

    def __init__(self, *args, memberships, current_user, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(NOBODY, "Nobody")]
        for membership in memberships:
            user = membership.user
            label = f"Me ({user.email})" if user.pk == current_user.pk else user.email
            choices.append((str(user.pk), label))
        self.fields["assignee"].choices = choices
        self.users = {str(m.user.pk): m.user for m in memberships}

    def assignee_user(self):
        return self.users.get(self.cleaned_data["assignee"]) if self.is_valid() else None


CONSENT_ACTIONS = {
    "opt_out_all": (ConsentKind.OPT_OUT, ConsentScope.ALL, "Opt out of all messages"),
    "opt_out_marketing": (ConsentKind.OPT_OUT, ConsentScope.MARKETING, "Opt out of marketing"),
    "opt_in_marketing": (ConsentKind.OPT_IN, ConsentScope.MARKETING, "Opt in to marketing"),
    "opt_in_all": (
        ConsentKind.OPT_IN,
        ConsentScope.ALL,
        "Opt back in to all messages (lifts an opt-out)",
    ),
}


class ConsentForm(forms.Form):
    action = forms.ChoiceField(
        label="Record",
        choices=[(key, label) for key, (_, _, label) in CONSENT_ACTIONS.items()],
    )
    reason = forms.CharField(
        label="Reason and evidence",
        max_length=500,
        required=False,
        strip=True,
        widget=forms.Textarea(
            attrs={"rows": 2, "placeholder": "e.g. Asked by phone on 3 May, call ref 1182"}
        ),
        help_text="Required for an opt-in: it is the evidence kept in the ledger.",
    )

    def clean(self):
        cleaned = super().clean()
        action = cleaned.get("action")
        if action in CONSENT_ACTIONS:
            kind, scope, _ = CONSENT_ACTIONS[action]
            cleaned["kind"], cleaned["scope"] = kind, scope
            if kind == ConsentKind.OPT_IN and not cleaned.get("reason"):
                self.add_error(
                    "reason", "An opt-in needs a reason: say how and when the customer agreed."
                )
        return cleaned


class KeywordRuleForm(forms.Form):
    word = forms.CharField(label="Word", max_length=40, strip=True)
    kind = forms.ChoiceField(label="Means", choices=ConsentKind.choices)
    language = forms.CharField(label="Language", max_length=10, required=False, strip=True)

    def clean_word(self) -> str:
        word = self.cleaned_data["word"]
        normalised = normalise_keyword(word)
        if not normalised:
            raise forms.ValidationError("Use a word with at least one letter or digit.")
        # Rules compare normalised words; two spellings of one word would be ambiguous.
        for rule in KeywordRule.objects.all():
            if normalise_keyword(rule.word) == normalised:
                raise forms.ValidationError(f"There is already a rule for {rule.word}.")
        return word
