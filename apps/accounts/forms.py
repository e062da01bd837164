from django import forms
from django.contrib.auth.forms import AuthenticationForm


class EmailAuthenticationForm(AuthenticationForm):
    """Django's login form; the username field holds the member's email."""

    username = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}),
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        # Django's text says both fields may be case-sensitive; the email is not (see
        # UserManager.get_by_natural_key), and the message names neither which one was wrong.
        "invalid_login": (
            "That email and password do not match an account. Passwords are case-sensitive."
        ),
    }
