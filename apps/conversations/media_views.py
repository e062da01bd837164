"""`POST /inbox/c/<uuid>/attach/`: an agent sends a file (with an optional caption).

The conversation is looked up in the member's tenant (404 for another tenant's, like every
inbox view). The send gate runs before anything is stored; the file is checked by its bytes.
htmx posts the form as multipart and gets the form back (with the refusal, or cleared after a
send plus `HX-Trigger: klaros:thread-changed` so the thread polls at once); without htmx the
answer is a redirect to the conversation with a flash message.
"""

from __future__ import annotations

import uuid

from django.contrib import messages as flash
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.media.services import MediaRejected

from .gate import SendRefused
from .lookups import get_conversation_or_404
from .media_send import queue_media_reply
from .outbox import SendError
from .views import member_required

FORM_TEMPLATE = "conversations/_attach_form.html"


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _form(request: HttpRequest, conversation, **context) -> HttpResponse:
    return render(request, FORM_TEMPLATE, {"conversation": conversation, **context})


@member_required
@require_POST
def attach(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_or_404(request, pk)
    caption = request.POST.get("caption", "")
    uploaded = request.FILES.get("file")
    error = ""
    try:
        if uploaded is None:
            raise SendError("Choose a file to attach.")
        queue_media_reply(conversation, uploaded, caption=caption, actor=request.user)
    except SendRefused as refusal:
        error = refusal.message
    except MediaRejected as rejected:
        error = rejected.message
    except SendError as exc:
        error = str(exc)
    if _is_htmx(request):
        # 200 even for a refusal: htmx swaps only 2xx answers, and the refusal is what the agent
        # needs to read next to the form.
        if error:
            return _form(request, conversation, attach_error=error, attach_caption=caption)
        response = _form(request, conversation, attach_notice="File queued for sending.")
        response["HX-Trigger"] = "klaros:thread-changed"
        return response
    if error:
        flash.error(request, error)
    else:
        flash.success(request, "File queued for sending.")
    return redirect("conversation", pk=conversation.pk)
