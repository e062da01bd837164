from django.urls import path

from . import media_views, views

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("list/", views.inbox_rows, name="inbox_rows"),
    path("errors/", views.error_reports, name="inbox_errors"),
    path("simulate/", views.simulate_customer, name="simulate_customer"),
    path("c/<uuid:pk>/", views.conversation_detail, name="conversation"),
    path("c/<uuid:pk>/messages/", views.conversation_messages, name="conversation_messages"),
    path("c/<uuid:pk>/reply/", views.reply, name="conversation_reply"),
    path("c/<uuid:pk>/attach/", media_views.attach, name="conversation_attach"),
    path("c/<uuid:pk>/template/", views.send_template, name="conversation_template"),
    path(
        "c/<uuid:pk>/template/preview/",
        views.template_preview,
        name="conversation_template_preview",
    ),
    path("c/<uuid:pk>/notes/", views.add_note, name="conversation_note"),
    path("c/<uuid:pk>/assign/", views.assign, name="conversation_assign"),
    path("c/<uuid:pk>/close/", views.close, name="conversation_close"),
    path("c/<uuid:pk>/reopen/", views.reopen, name="conversation_reopen"),
    path("m/<uuid:pk>/", views.message_permalink, name="message"),
    path("contacts/<uuid:pk>/", views.contact_detail, name="contact"),
    path("contacts/<uuid:pk>/consent/", views.contact_consent, name="contact_consent"),
    path("settings/", views.workspace_settings, name="inbox_settings"),
    path("settings/keywords/", views.keyword_rule_add, name="keyword_rule_add"),
    path(
        "settings/keywords/<uuid:pk>/delete/",
        views.keyword_rule_delete,
        name="keyword_rule_delete",
    ),
    path(
        "numbers/<uuid:pk>/sync-templates/",
        views.sync_number_templates,
        name="number_sync_templates",
    ),
]
