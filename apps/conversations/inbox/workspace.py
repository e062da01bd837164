"""Workspace settings (tenant admins): template sync per number and the tenant's own consent
keywords."""

from __future__ import annotations

import uuid

from django.contrib import messages as flash
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from apps.audit.services import record
from apps.consent.models import KeywordRule
from apps.whatsapp.graph import GraphError, GraphTransportError

from ..models import Template, TemplateStatus
from ..outbound.template_sync import sync_templates
from .access import member_required, require_admin
from .forms import KeywordRuleForm
from .lookups import (
    get_keyword_rule_or_404,
    get_number_or_404,
    tenant_numbers,
)


def _settings_context(request: HttpRequest, keyword_form: KeywordRuleForm | None = None) -> dict:
    numbers = list(tenant_numbers(request).order_by("display_phone_number", "id"))
    counts = {}
    for waba_id, status in Template.objects.filter(tenant_id=request.tenant.pk).values_list(
        "waba_id", "status"
    ):
        entry = counts.setdefault(waba_id, {"approved": 0, "total": 0})
        entry["total"] += 1
        entry["approved"] += status == TemplateStatus.APPROVED
    for number in numbers:
        number.template_counts = counts.get(number.waba_id, {"approved": 0, "total": 0})
    return {
        "numbers": numbers,
        "keyword_rules": list(KeywordRule.objects.filter(tenant_id=request.tenant.pk)),
        "keyword_form": keyword_form or KeywordRuleForm(),
    }


@member_required
@require_GET
def workspace_settings(request: HttpRequest) -> HttpResponse:
    require_admin(request)
    return render(request, "conversations/settings.html", _settings_context(request))


@member_required
@require_POST
def sync_number_templates(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Fetch the number's templates from Meta now. Runs in the request (an admin action, with
    the Graph client's timeout) so the admin sees the outcome or Meta's error at once."""
    require_admin(request)
    number = get_number_or_404(request, pk)
    try:
        result = sync_templates(number, actor=request.user)
    except GraphError as exc:
        detail = exc.details or exc.message or exc.title
        flash.error(
            request,
            f"Meta refused the template sync for {number.display_phone_number}: "
            f"{exc.human_explanation}{f' ({detail})' if detail else ''}",
        )
    except GraphTransportError as exc:
        flash.error(
            request,
            f"Meta could not be reached to sync the templates of "
            f"{number.display_phone_number}. Try again in a minute. ({exc})",
        )
    else:
        flash.success(
            request,
            f"Synced {result.total} template{'s' if result.total != 1 else ''} of "
            f"{number.display_phone_number} from Meta ({result.created} new, "
            f"{result.updated} updated).",
        )
    return redirect(local_next(request) or reverse("inbox_settings"))


def local_next(request: HttpRequest) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return ""


@member_required
@require_POST
def keyword_rule_add(request: HttpRequest) -> HttpResponse:
    require_admin(request)
    form = KeywordRuleForm(request.POST)
    if not form.is_valid():
        context = _settings_context(request, keyword_form=form)
        return render(request, "conversations/settings.html", context, status=422)
    with transaction.atomic():
        rule = KeywordRule.objects.create(
            tenant_id=request.tenant.pk,
            word=form.cleaned_data["word"],
            kind=form.cleaned_data["kind"],
            language=form.cleaned_data["language"],
        )
        record(
            "consent.keyword_added",
            rule,
            actor=request.user,
            data={"word": rule.word, "kind": rule.kind, "language": rule.language},
        )
    flash.success(request, f"Added {rule.word}: {rule.get_kind_display().lower()}.")
    return redirect("inbox_settings")


@member_required
@require_POST
def keyword_rule_delete(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    require_admin(request)
    rule = get_keyword_rule_or_404(request, pk)
    with transaction.atomic():
        record(
            "consent.keyword_deleted",
            rule,
            actor=request.user,
            data={"word": rule.word, "kind": rule.kind},
        )
        rule.delete()
    flash.success(request, f"The keyword {rule.word} was removed.")
    return redirect("inbox_settings")
