"""The web memory inspector (/ui) in headless Chromium, against the real proxy and a loopback upstream.

A chat writes a memory (X-Memos-User); the inspector signs in with an admin key, lists the tenant's
users, finds the memory, edits it and opens its version history, searches with scores, shows the audit
trail with verify's result, and erases the user after a confirmation. A screenshot of each page is
saved under tests/ui/screens/ (git-ignored; CI keeps them as an artifact). The key never appears in a
URL; every /ui answer carries the strict CSP, and the page loads nothing from outside the proxy.

The browser is Debian's chromium (/usr/bin/chromium), installed with apt-get when missing; playwright
launches it by path, so no browser is downloaded. Without it (and no way to install it) the module is
skipped with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.memory import listed, remembered
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

CHROMIUM = Path("/usr/bin/chromium")
SCREENS = Path(__file__).resolve().parent / "screens"
FACT = "My favourite colour is teal."
EDITED = "My favourite colour is deep teal."
USER = "alice"


def _chromium() -> Path:
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (no apt-get, or not root)")
        for args in ([apt, "update"], [apt, "install", "-y", "chromium"]):
            done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:])
                pytest.skip(f"`{' '.join(args)}` failed ({done.returncode}): no chromium to test /ui in")
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    with proxy_stack(
        tmp_path_factory.mktemp("ui-e2e"), key_cache_ttl_s=0, worker_poll_interval_s=0.02
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def running(stack: tuple[FakeUpstream, RunningProxy]) -> RunningProxy:
    return stack[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(executable), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _chat(running: RunningProxy, key: str, user: str, text: str) -> None:
    with openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Memos-User": user},
        )


def test_ui_answers_carry_a_strict_csp(running: RunningProxy) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
        r = httpx.get(running.url + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["referrer-policy"] == "no-referrer"
    redirect = httpx.get(running.url + "/ui")
    assert redirect.status_code == 308 and redirect.headers["location"] == "/ui/"
    assert "content-security-policy" in redirect.headers
    page = httpx.get(running.url + "/ui/").text
    assert "<style" not in page and "style=" not in page and "<script>" not in page  # no inline code
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere
    script = httpx.get(running.url + "/ui/app.js").text  # memory text is untrusted: never parsed as HTML
    assert not any(s in script for s in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"))


def test_users_lists_the_tenants_owners_a_key_may_read(running: RunningProxy) -> None:
    admin = running.create_key("acme", "admin")
    for user in ("u-one", "u-two"):
        r = httpx.post(
            running.base_url + "/memories",
            headers={"Authorization": f"Bearer {admin}"},
            json={"user": user, "memories": [f"{user} likes tea"], "infer": False},
            timeout=120,
        )
        assert r.status_code == 200, r.text
    users = httpx.get(running.base_url + "/users", headers={"Authorization": f"Bearer {admin}"}).json()
    assert {"object": "user", "user": "u-one"} in users["data"]
    assert {"u-one", "u-two"} <= {u["user"] for u in users["data"]}
    bound = running.create_key("acme", "user", user="u-two")
    seen = httpx.get(running.base_url + "/users", headers={"Authorization": f"Bearer {bound}"}).json()
    assert [u["user"] for u in seen["data"]] == ["u-two"]
    other = running.create_key("globex", "admin")
    assert (
        httpx.get(running.base_url + "/users", headers={"Authorization": f"Bearer {other}"}).json()["data"]
        == []
    )
    assert httpx.get(running.base_url + "/users").status_code == 401
    refused = httpx.put(running.base_url + "/users", headers={"Authorization": f"Bearer {admin}"})
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"  # never relayed upstream


def test_inspector_end_to_end(running: RunningProxy, browser: Any) -> None:
    app_key = running.create_key("acme", "app")
    _chat(running, app_key, USER, FACT)
    remembered(running, app_key, USER, FACT)
    key = running.create_key("acme", "admin")
    SCREENS.mkdir(exist_ok=True)

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    urls: list[str] = []
    outside: list[str] = []
    csp: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("request", lambda r: None if r.url.startswith(running.url) else outside.append(r.url))
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: csp.append(f"page error: {e}"))

    def shot(name: str) -> None:
        page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)

    page.goto(running.url + "/ui/")
    page.wait_for_selector("#signin-form")
    page.fill("#key", key)
    shot("1-sign-in")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector(f"#users-table td.user-id:text-is('{USER}')")
    assert page.evaluate("sessionStorage.getItem('memos-inspector-key')") == key
    shot("2-users")

    page.click(f"button.open-user[data-user='{USER}']")
    row = page.locator("#memories-table tr.memory-row", has_text=FACT)
    row.wait_for()
    assert "active" in row.inner_text()
    shot("3-memories")

    row.locator("button.open-memory").click()
    page.wait_for_selector("#view-memory:not([hidden])")
    assert page.locator("#memory-fields .memory-text").inner_text() == FACT
    page.fill("#edit-text", EDITED)
    page.click("#edit-form button[type=submit]")
    page.click("#confirm-ok")
    page.wait_for_selector("#history li.version >> nth=1")
    history = page.locator("#history").inner_text()
    assert FACT in history and EDITED in history and "memory:" in history
    shot("4-memory-history")

    page.click("#nav-search")
    page.fill("#search-user", USER)
    page.fill("#search-query", "favourite colour")
    page.click("#search-form button[type=submit]")
    hit = page.locator("#search-table tr.hit-row", has_text=EDITED)
    hit.wait_for()
    assert float(hit.locator("td").first.inner_text()) > 0
    # The block a chat with this query would be sent, as text.
    page.wait_for_selector("#injection-block:not(:empty)")
    block = page.locator("#injection-block").inner_text()
    assert EDITED in block and "<memories" in block
    assert "about" in page.locator("#injection-summary").inner_text()
    shot("5-search")

    page.click("#nav-audit")
    page.wait_for_selector("#audit-table tr.audit-row")
    page.click("#verify-audit")
    page.wait_for_selector("#verify-result.ok")
    assert "Chain intact" in page.inner_text("#verify-result")
    shot("6-audit")

    page.click("#nav-users")
    page.click(f"button.open-user[data-user='{USER}']")
    page.wait_for_selector("#view-memories:not([hidden])")
    page.click("#erase-user")
    page.wait_for_selector("#confirm[open]")
    shot("7-erase-confirm")
    page.click("#confirm-cancel")  # cancel first: nothing is erased
    assert listed(running, key, USER) != []
    page.click("#erase-user")
    page.click("#confirm-ok")
    page.wait_for_selector("#status:has-text('Erased user')")
    assert page.locator(f"button.open-user[data-user='{USER}']").count() == 0
    shot("8-erased")
    assert listed(running, key, USER) == []

    assert urls and not any(key in u for u in urls), "the key appeared in a URL"
    assert key not in page.url
    assert outside == [], outside
    assert csp == [], csp
    context.close()


def test_memory_text_is_shown_as_text_and_a_bad_key_is_refused(running: RunningProxy, browser: Any) -> None:
    key = running.create_key("acme", "admin")
    hostile = '<img src=x id=pwned onerror="window.pwned=1"><b>bold</b>'
    r = httpx.post(
        running.base_url + "/memories",
        headers={"Authorization": f"Bearer {key}"},
        json={"user": "mallory", "memories": [hostile], "infer": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(running.url + "/ui/")
    assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]
    page.fill("#key", "mp-not-a-key")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#status.error")
    assert page.evaluate("sessionStorage.getItem('memos-inspector-key')") is None
    assert not page.locator("#view-signin").is_hidden()

    page.fill("#key", key)
    page.click("#signin-form button[type=submit]")
    page.click("button.open-user[data-user='mallory']")
    cell = page.locator("#memories-table tr.memory-row td.text").first
    cell.wait_for()
    assert cell.inner_text() == hostile  # the markup shows as characters
    assert page.locator("#pwned").count() == 0 and page.locator("#memories-table b").count() == 0
    assert page.evaluate("window.pwned") is None
    context.close()
