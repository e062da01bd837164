from django.apps import AppConfig


class ConsentConfig(AppConfig):
    name = "apps.consent"
    label = "consent"
    default_auto_field = "django.db.models.BigAutoField"
