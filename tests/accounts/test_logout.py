"""Logging out is a POST (a link or an image tag cannot log a member out)."""

from __future__ import annotations


def test_it_refuses_to_log_out_on_get(alice_client):
    response = alice_client.get("/accounts/logout/")

    assert response.status_code == 405
    assert alice_client.get("/inbox/").status_code == 200


def test_it_logs_out_on_post_and_returns_to_the_login_page(alice_client):
    response = alice_client.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert alice_client.get("/inbox/")["Location"] == "/accounts/login/?next=/inbox/"


def test_the_logout_form_in_the_header_posts_with_a_csrf_token(alice_client):
    page = alice_client.get("/inbox/").content.decode()

    form = page[page.index('action="/accounts/logout/"') - 40 :]
    form = form[: form.index("</form>")]
    assert 'method="post"' in form
    assert "csrfmiddlewaretoken" in form
