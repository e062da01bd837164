from django.urls import path

from . import views

urlpatterns = [
    path("contacts.csv", views.export_contacts, name="export_contacts"),
]
