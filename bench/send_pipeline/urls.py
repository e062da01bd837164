"""The product's URLs plus two bench-only views on the same middleware stack:

- `/bench/noop`: reads the body, returns 200 (the baseline);
- `/bench/reply/<conversation>`: what an agent reply does (the `queue_text_reply` service: gate,
  outbound row, audit event, dispatcher wake-up), for as long as the product has no reply
  endpoint. Authentication is replaced by the tenant owner, loaded per request as the session
  middleware would load the agent.
"""

from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from apps.conversations.models import Conversation
from apps.conversations.outbound.outbox import queue_text_reply
from apps.tenants.models import Membership
from apps.tenants.scoping import tenant_scope, unscoped
from klaros.urls import urlpatterns as product_urlpatterns


@csrf_exempt
def noop(request):
    request.body  # read the body like the real view does  # noqa: B018
    return HttpResponse("ok\n", content_type="text/plain")


@csrf_exempt
def reply(request, conversation_id):
    with unscoped("bench: resolve the conversation"):
        conversation = Conversation.objects.select_related("number", "contact").get(
            pk=conversation_id
        )
    with tenant_scope(conversation.tenant_id):
        agent = Membership.objects.select_related("user").filter(tenant_id=conversation.tenant_id)
        agent = agent.order_by("pk").first().user
        message = queue_text_reply(conversation, request.POST.get("body", ""), actor=agent)
    return JsonResponse({"id": str(message.pk), "status": message.status})


urlpatterns = [
    path("bench/noop", noop),
    path("bench/reply/<uuid:conversation_id>", reply),
    *product_urlpatterns,
]
