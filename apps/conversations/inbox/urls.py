from django.urls import path

from . import activity, composer, contact, listing, spend, thread, workspace

urlpatterns = [
    path("", listing.inbox, name="inbox"),
    path("list/", listing.inbox_rows, name="inbox_rows"),
    path("errors/", listing.error_reports, name="inbox_errors"),
    path("simulate/", listing.simulate_customer, name="simulate_customer"),
    path("c/<uuid:pk>/", thread.conversation_detail, name="conversation"),
    path("c/<uuid:pk>/messages/", thread.conversation_messages, name="conversation_messages"),
    path("c/<uuid:pk>/reply/", composer.reply, name="conversation_reply"),
    path("c/<uuid:pk>/attach/", composer.attach, name="conversation_attach"),
    path("c/<uuid:pk>/template/", composer.send_template, name="conversation_template"),
    path(
        "c/<uuid:pk>/template/preview/",
        composer.template_preview,
        name="conversation_template_preview",
    ),
    path("c/<uuid:pk>/notes/", thread.add_note, name="conversation_note"),
    path("c/<uuid:pk>/assign/", thread.assign, name="conversation_assign"),
    path("c/<uuid:pk>/close/", thread.close, name="conversation_close"),
    path("c/<uuid:pk>/reopen/", thread.reopen, name="conversation_reopen"),
    path("m/<uuid:pk>/", thread.message_permalink, name="message"),
    path("contacts/<uuid:pk>/", contact.contact_detail, name="contact"),
    path("contacts/<uuid:pk>/consent/", contact.contact_consent, name="contact_consent"),
    path("spend/", spend.spend, name="inbox_spend"),
    path("spend/csv/", spend.spend_csv, name="inbox_spend_csv"),
    path("settings/", workspace.workspace_settings, name="inbox_settings"),
    path("activity/", activity.activity, name="inbox_activity"),
    path("activity/export.csv", activity.activity_export, name="inbox_activity_export"),
    path("settings/keywords/", workspace.keyword_rule_add, name="keyword_rule_add"),
    path(
        "settings/keywords/<uuid:pk>/delete/",
        workspace.keyword_rule_delete,
        name="keyword_rule_delete",
    ),
    path(
        "numbers/<uuid:pk>/sync-templates/",
        workspace.sync_number_templates,
        name="number_sync_templates",
    ),
]
