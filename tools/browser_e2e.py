#!/usr/bin/env python3
"""A card member's browser for the end-to-end test (crates/cardlink/tests/e2e.rs).

Drives Debian's Chromium headless through Playwright against the pages `cardlink dev` serves,
takes a screenshot of every page, and prints one JSON object with what each page showed, for the
Rust test to check against the gRPC APIs.

  browser_e2e.py consent --url URL --login ID --password PW --out DIR
      sign in at the consent page, approve, follow the redirect to the aggregator's callback
  browser_e2e.py pages --base URL --issuer ID --login ID --password PW --revoke AGGREGATOR_NAME --out DIR
      transparency, goal, live view; the member's dashboard (consents, access history), and revoke one

A screenshot counts as rendered when it is not blank: enough of it differs from the background
and it holds more than a handful of colours. Every failure exits non-zero with the reason.
"""

import argparse
import json
import os
import sys

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CARDLINK_CHROMIUM", "/usr/bin/chromium")
# As the machine notes say: without the background-networking flags Chromium keeps trying hosts
# this closed network refuses.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def check_rendered(path):
    """The screenshot shows a page, not a blank or error canvas."""
    image = Image.open(path).convert("RGB")
    small = image.resize((image.width // 4, image.height // 4))
    pixels = list(small.getdata())
    background = max(set(pixels), key=pixels.count)
    ink = sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, background)) > 60) / len(pixels)
    colours = len(set(pixels))
    if ink < 0.01 or colours < 16:
        fail(f"{path}: looks blank (ink {ink:.3f}, {colours} colours)")
    return {"path": path, "ink": round(ink, 4), "colours": colours, "width": image.width, "height": image.height}


def text(element, selector):
    """The text of the first `selector` inside `element` (an element handle), or ""."""
    found = element.query_selector(selector)
    return found.inner_text() if found else ""


def shoot(page, out, name):
    path = os.path.join(out, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return check_rendered(path)


def consent(page, args):
    result = {}
    page.goto(args.url)
    result["login_heading"] = page.inner_text("h1")
    result["request"] = page.inner_text(".box")
    # Sign-in happens at the card company's own login (its OpenID Provider), not on cardlink.
    page.click("#sign-in")
    page.wait_for_selector("input[name=login_id]")
    result["provider_url"] = page.url
    result["provider_heading"] = page.inner_text("h1")
    result["login_screenshot"] = shoot(page, args.out, "consent-login")
    page.fill("input[name=login_id]", args.login)
    page.fill("input[name=password]", args.password)
    page.click("button[value=login]")
    page.wait_for_selector("input[name=account]")
    result["accounts"] = [page.inner_text(f"label:has(input[value='{v}'])") for v in
                          page.eval_on_selector_all("input[name=account]", "els => els.map(e => e.value)")]
    result["scopes"] = page.eval_on_selector_all("input[name=scope]", "els => els.map(e => e.value)")
    result["approve_screenshot"] = shoot(page, args.out, "consent-approve")
    page.click("button[value=approve]")
    # The consent page redirects to the aggregator's redirect URI (the CLI's loopback listener).
    page.wait_for_url("**/callback?**", timeout=20000)
    page.wait_for_selector("p")
    result["callback_url"] = page.url
    result["callback_text"] = page.inner_text("p")
    return result


def member_sign_in(page, args):
    """Sign in on the member page, as the card company's member."""
    page.goto(args.base + "/member")
    page.select_option("select[name=issuer_id]", args.issuer)
    page.click("#sign-in")
    page.wait_for_selector("input[name=login_id]")
    page.fill("input[name=login_id]", args.login)
    page.fill("input[name=password]", args.password)
    page.click("button[value=login]")
    page.wait_for_selector("#consents")


def pages(page, args):
    result = {}
    page.goto(args.base + "/transparency")
    result["transparency"] = {
        issuer.get_attribute("data-issuer"): {
            "name": text(issuer, "h2"),
            "aggregators": [text(row, "td:first-child") for row in issuer.query_selector_all("tr.connection")],
        }
        for issuer in page.query_selector_all("section.issuer")
    }
    result["transparency_screenshot"] = shoot(page, args.out, "transparency")

    page.goto(args.base + "/goal")
    result["goal"] = {
        "share": page.inner_text("#share"),
        "issuers": {row.get_attribute("data-issuer"): text(row, "td:last-child")
                    for row in page.query_selector_all("tr.issuer")},
    }
    result["goal_screenshot"] = shoot(page, args.out, "goal")

    page.goto(args.base + "/live")
    # The page fills its tables from /live.json every second; rates need two snapshots.
    page.wait_for_function(
        "document.querySelectorAll('#events-in tr').length > 1 && "
        "[...document.querySelectorAll('#events-in td:nth-child(3)')].some(td => parseFloat(td.textContent) > 0)",
        timeout=30000,
    )
    result["live"] = {
        "events_in": {text(row, "td"): text(row, "td:nth-child(2)")
                      for row in page.query_selector_all("#events-in tr") if row.query_selector("td")},
        "deliveries": [text(row, "td") for row in page.query_selector_all("#deliveries tr") if row.query_selector("td")],
    }
    result["live_screenshot"] = shoot(page, args.out, "live")

    member_sign_in(page, args)
    result["member_heading"] = page.inner_text("h1")
    result["consents"] = [text(row, "td:first-child") for row in page.query_selector_all("#consents tr:has(td)")]
    # The subscription service flushes its access tallies every 10 s: sign in again until the
    # history shows what was delivered.
    for _ in range(30):
        if page.query_selector("table#access-history"):
            break
        page.wait_for_timeout(2000)
        member_sign_in(page, args)
    history = page.query_selector_all("table#access-history tr:has(td)")
    result["access_history"] = [[td.inner_text() for td in row.query_selector_all("td")] for row in history]
    result["dashboard_screenshot"] = shoot(page, args.out, "member-dashboard")

    row = page.query_selector(f"#consents tr:has(td:first-child:text-is('{args.revoke}'))")
    if row is None:
        fail(f"no consent row for {args.revoke!r}: {result['consents']}")
    row.query_selector("button").click()
    page.wait_for_selector(".box")
    result["revoke_notice"] = page.inner_text(".box")
    result["after_revoke"] = [[td.inner_text() for td in r.query_selector_all("td")][:4]
                              for r in page.query_selector_all("#consents tr:has(td)")]
    result["revoked_screenshot"] = shoot(page, args.out, "member-revoked")
    return result


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consent")
    c.add_argument("--url", required=True)
    p = sub.add_parser("pages")
    p.add_argument("--base", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--revoke", required=True)
    for s in (c, p):
        s.add_argument("--login", required=True)
        s.add_argument("--password", required=True)
        s.add_argument("--out", required=True)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="ja-JP")
        page.set_default_timeout(20000)
        try:
            result = consent(page, args) if args.command == "consent" else pages(page, args)
        except Exception as e:  # the reason, with the page it happened on
            shot = os.path.join(args.out, f"failure-{args.command}.png")
            try:
                page.screenshot(path=shot, full_page=True)
            except Exception:
                pass
            fail(f"{args.command}: {e} (at {page.url}; screenshot {shot})")
        finally:
            browser.close()
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
