"""Assertions the page tests share: who may see the leads' and engineers' pages, and that
a page keeps to the content security policy."""

import re


def csp_clean(html: str) -> bool:
    """Return whether a page has no inline style attribute and no inline script."""
    scripts = re.findall(r"<script[^>]*>", html)
    return ' style="' not in html and all("src=" in tag for tag in scripts)


def assert_data_roles_only(client, *, outsider, annotator, members, pages, posts=(),
                           downloads=()):
    """Outsiders get 404 and annotators 403 on every page (whole and htmx), post
    ((url, data) pairs) and download; members get every page, CSP-clean, and every
    download; the anonymous are sent to log in."""
    for user, status in ((outsider, 404), (annotator, 403)):
        client.force_login(user)
        for url in pages:
            assert client.get(url).status_code == status, (user, url)
            assert client.get(url, HTTP_HX_REQUEST="true").status_code == status, (user, url)
        for url in downloads:
            assert client.get(url).status_code == status, (user, url)
        for url, data in posts:
            assert client.post(url, data).status_code == status, (user, url)
    for user in members:
        client.force_login(user)
        for url in pages:
            response = client.get(url)
            assert response.status_code == 200, (user, url)
            assert csp_clean(response.content.decode()), url
        for url in downloads:
            assert client.get(url).status_code == 200, (user, url)
    client.logout()
    for url in (*pages, *downloads):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
