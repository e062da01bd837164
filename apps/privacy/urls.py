from django.urls import path

from . import views

urlpatterns = [
    path("contacts.csv", views.export_contacts, name="export_contacts"),
    path("contacts/<uuid:pk>.zip", views.export_contact, name="export_contact_data"),
]
