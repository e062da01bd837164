from django.urls import path

from . import views

urlpatterns = [
    path("switch/", views.switch_tenant, name="switch_tenant"),
]
