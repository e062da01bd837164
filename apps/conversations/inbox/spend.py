"""The spend page (tenant owners and admins): the month's charges per number, category and day,
with a server-rendered bar chart and the month's CSV."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.billing.models import Charge
from apps.billing.services import charge_rows, month_bounds, month_spend

from .access import member_required, require_admin
from .lookups import get_number_or_404, tenant_numbers

CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 620, 160, 10


def _month(request: HttpRequest) -> date:
    value = request.GET.get("month") or datetime.now(UTC).strftime("%Y-%m")
    try:
        year, month = (int(part) for part in value.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise Http404("No such month.") from None


def _shift(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _chart(month: date, spend) -> dict:
    """Bars per day of the month: billable messages per UTC day (a day whose charges have no
    rate still shows), each bar titled with the day's amounts. Plain numbers for the SVG."""
    start, end = month_bounds(month)
    days = [start.date() + timedelta(days=n) for n in range((end - start).days)]
    lines = [spend.by_day.get(day) for day in days]
    peak = max((line.charges for line in lines if line), default=0) or 1
    slot = CHART_WIDTH / len(days)
    bars = []
    for n, (day, line) in enumerate(zip(days, lines, strict=True)):
        count = line.charges if line else 0
        height = round(count / peak * CHART_HEIGHT, 1)
        amounts = ", ".join(f"{a} {c}" for c, a in line.amount_list()) if line else ""
        if line and line.unpriced:
            amounts = f"{amounts}; {line.unpriced} with no rate" if amounts else "no rate"
        bars.append(
            {
                "day": day,
                "count": count,
                "amounts": amounts,
                "x": round(n * slot + 1, 1),
                "width": round(slot - 2, 1),
                "y": round(CHART_TOP + CHART_HEIGHT - height, 1),
                "height": height,
            }
        )
    return {
        "bars": bars,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT + CHART_TOP + 20,
        "baseline": CHART_TOP + CHART_HEIGHT,
    }


@member_required
@require_GET
def spend(request: HttpRequest) -> HttpResponse:
    require_admin(request)
    month = _month(request)
    number = None
    if request.GET.get("number"):
        number = get_number_or_404(request, request.GET["number"])
    result = month_spend(month, tenant_id=request.tenant.pk, number_id=number and number.pk)
    numbers = {n.pk: n for n in tenant_numbers(request)}
    this_month = datetime.now(UTC).date().replace(day=1)
    context = {
        "month": month,
        "previous_month": _shift(month, -1),
        "next_month": _shift(month, 1) if month < this_month else None,
        "spend": result,
        "number": number,
        "numbers": sorted(numbers.values(), key=lambda n: n.display_phone_number),
        "by_number": [
            (numbers.get(pk), line) for pk, line in sorted(result.by_number.items(), key=str)
        ],
        "by_category": sorted(result.by_category.items()),
        "chart": _chart(month, result),
    }
    return render(request, "billing/spend.html", context)


class _Echo:
    def write(self, value: str) -> str:
        return value


@member_required
@require_GET
def spend_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The month's charges as CSV, streamed: the same rows as `manage.py export_charges`."""
    require_admin(request)
    month = _month(request)
    start, end = month_bounds(month)
    charges = Charge.objects.filter(
        tenant_id=request.tenant.pk, occurred_at__gte=start, occurred_at__lt=end
    )
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in charge_rows(charges)), content_type="text/csv"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="charges-{request.tenant.slug}-{month:%Y-%m}.csv"'
    )
    return response
