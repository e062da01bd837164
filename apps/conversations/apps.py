from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "apps.conversations"
    label = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from apps.tenants.models import MetaApp

        from .inbound.webhook import forget_app_secrets

        # A changed or removed Meta app must not verify webhooks from a stale cache.
        post_save.connect(forget_app_secrets, sender=MetaApp, dispatch_uid="klaros-app-secrets")
        post_delete.connect(forget_app_secrets, sender=MetaApp, dispatch_uid="klaros-app-secrets-d")
