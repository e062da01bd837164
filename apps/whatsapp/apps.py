from django.apps import AppConfig


class WhatsAppConfig(AppConfig):
    """Meta integration without models: signatures, payload parsing, Graph client, simulator."""

    name = "apps.whatsapp"
    label = "whatsapp"
    verbose_name = "WhatsApp Cloud API"
