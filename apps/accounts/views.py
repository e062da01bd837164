from django.contrib.auth import views as auth_views

from apps.audit.services import record


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change (which keeps this session and ends the member's others),
    audited."""

    def form_valid(self, form):
        response = super().form_valid(form)
        record("auth.password_changed", self.request.user, actor=self.request.user)
        return response
