"""The product's URLs plus two baselines with the same middleware stack:

* `/bench/noop`: reads the body and answers 200 (no work);
* `/bench/insert`: reads the body and stores it with one raw INSERT, committed on its own (no
  signature check, no ORM); the table is created by run.py.
"""

from django.db import connection
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from klaros.urls import urlpatterns as product_urlpatterns


@csrf_exempt
def noop(request):
    request.body  # read the body like the real view does  # noqa: B018
    return HttpResponse("ok\n", content_type="text/plain")


@csrf_exempt
def insert(request):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_insert (body, received_at) VALUES (%s, now())", [request.body]
        )
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [path("bench/noop", noop), path("bench/insert", insert), *product_urlpatterns]
