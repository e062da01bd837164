"""The product's URLs plus `/bench/noop`: the same middleware stack, no work (the baseline)."""

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from klaros.urls import urlpatterns as product_urlpatterns


@csrf_exempt
def noop(request):
    request.body  # read the body like the real view does  # noqa: B018
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [path("bench/noop", noop), *product_urlpatterns]
