"""Logins and failed logins go to the audit log (ids only, no emails)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from apps.audit.services import record


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs):
    record("auth.login", user, actor=user)


@receiver(user_login_failed)
def audit_failed_login(sender, credentials, request=None, **kwargs):
    # Name the account only by id, and only when it exists: no typed emails in the log.
    User = get_user_model()
    user = User.objects.filter(email__iexact=credentials.get("username") or "").first()
    record(
        "auth.login_failed",
        user,
        actor=None,
        data={"known_account": user is not None},
    )
