#!/usr/bin/env python3
"""Real-browser test of the cemesh dashboard (/ui/ on the admin port).

Drives headless Chromium through Selenium against a cemesh that is already running
(the caller starts it, its subscriber, and whatever resources the checks name):

  python3 tests/browser/dashboard.py --admin http://127.0.0.1:9090 \
      --ingress http://127.0.0.1:8080 --out /tmp/shots --expect-trigger orders \
      [--token T] [--namespace default] [--broker default] \
      [--event-type TYPE --check-delivered] [--events 5] \
      [--deadletter-trigger NAME [--deadletter-event-id ID] [--redrive-marker FILE]] \
      [--journey-id ID [--journey-source SRC] [--journey-broker NAME]] [--timeout 20]

Checks, in order (each failure prints `FAIL: <why>` and exits 1):
  1. the page loads; with --token, the sign-in form appears, refuses a wrong token
     with a message, takes the right one (kept in sessionStorage, never in the URL
     or localStorage) and data shows; at the end, signing out brings the form back;
  2. the trigger --expect-trigger is a node of the topology; screenshots in the light
     and dark themes;
  3. --events events POSTed to the broker's ingress (binary mode) move the broker's
     accepted counter in the topology and on the Metrics view (and, with
     --check-delivered, the trigger's delivered counter);
  4. the Event types view lists --event-type; the resources tables list the trigger;
     a click on its topology node opens its detail: conditions, owner, manifest and
     live charts;
  5. with --deadletter-trigger: a dead letter of it is listed with its attempts; a
     redrive cancelled in the dialog changes nothing; a confirmed one reports
     `delivered` and the letter leaves the list (its event id is printed as
     `REDRIVEN <id>` and written to --redrive-marker as JSON);
  6. the live tail (fetch-streamed SSE) shows an event POSTed while it runs; paused,
     it holds the next one and shows it on resume;
  7. the journey of --journey-id (else the first posted event with --check-delivered,
     else the redriven event) shows at least one attempt row with a status;
  8. at 390 px the nav folds behind its button and the page does not scroll sideways;
  9. the browser console has no error or warning (a 401 while signing in excepted).
Screenshots (PNG) go to --out. Exit codes: 0 passed, 1 a check failed (`FAIL: ...`
on stderr), 77 skipped: Selenium, Chromium or chromedriver is not installed.
"""

import argparse
import base64
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as e:  # the environment, not the dashboard: exit 77 (skipped)
    print(f"SKIP: Selenium is not installed ({e}): pip install selenium", file=sys.stderr)
    sys.exit(77)


class Failure(Exception):
    pass


def tid(*parts):
    """The dashboard's data-test ids: parts joined by '-', odd characters as '_'."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", str(p)) for p in parts)


def q(test_id):
    return f'[data-test="{test_id}"]'


class Dashboard:
    def __init__(self, args):
        self.args = args
        self.admin = args.admin.rstrip("/")
        self.ingress = args.ingress.rstrip("/")
        self.posted = []
        self.console = []  # (step, entry)
        opts = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--window-size=1280,900"):
            opts.add_argument(a)
        opts.binary_location = args.chromium
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
        self.driver.set_page_load_timeout(args.timeout)

    # ---- helpers -------------------------------------------------------------

    def log(self, msg):
        print(f"ok: {msg}", flush=True)

    def wait(self, what, fn, timeout=None):
        try:
            return WebDriverWait(self.driver, timeout or self.args.timeout, poll_frequency=0.2,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: fn())
        except TimeoutException:
            banner = self.js("return document.getElementById('banner')?.hidden ? '' : document.getElementById('banner')?.innerText")
            raise Failure(f"timed out after {timeout or self.args.timeout}s waiting for {what}"
                          + (f" (page says: {banner.strip()})" if banner else "")) from None

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def attr(self, selector, name):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
                       selector, name)

    def exists(self, selector):
        return self.js("return !!document.querySelector(arguments[0]);", selector)

    def visible(self, selector):
        return self.js("const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;"
                       " ", selector)

    def pick(self, test, value, what):
        """Selects `value` in the <select data-test=`test`> once the page offers it."""
        self.wait(f"{value} in {what}",
                  lambda: self.js(f"return [...document.querySelectorAll('[data-test={test}] option')].some(o => o.value === arguments[0])", value))
        Select(self.driver.find_element(By.CSS_SELECTOR, q(test))).select_by_value(value)

    def click(self, selector, what=None):
        def go():
            els = self.driver.find_elements(By.CSS_SELECTOR, selector)
            if not els or not els[0].is_displayed() or not els[0].is_enabled():
                return False
            els[0].click()
            return True
        self.wait(what or f"{selector} to be clickable", go)

    def route(self, hash_route, ready_selector, what):
        self.driver.get(f"{self.admin}/ui/#/{hash_route}")
        self.wait(what, lambda: self.visible(ready_selector))

    def shot(self, name, full=False):
        """A PNG of the viewport, or with full=True of the whole page."""
        path = os.path.join(self.args.out, f"{name}.png")
        if full:
            w = self.js("return document.documentElement.scrollWidth")
            h = self.js("return Math.min(document.documentElement.scrollHeight, 6000)")
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})
            with open(path, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(path)
        self.log(f"screenshot {path}")

    def collect_console(self, step, allow_401=False):
        bad = []
        for e in self.driver.get_log("browser"):
            if e.get("level") not in ("SEVERE", "WARNING"):
                continue
            if allow_401 and "status of 401" in e.get("message", ""):
                continue
            bad.append(e)
            self.console.append((step, e))
        if bad:
            lines = "\n  ".join(f"[{e['level']}] {e['message']}" for e in bad)
            raise Failure(f"the browser console has errors or warnings during '{step}':\n  {lines}")

    def http(self, url, method="GET", body=None, headers=None):
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def admin_get(self, path):
        headers = {"Accept": "application/json"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        status, body = self.http(self.admin + path, headers=headers)
        try:
            return status, json.loads(body or b"null")
        except ValueError:
            return status, None

    def post_event(self, ev_type=None, ev_id=None):
        ev_id = ev_id or f"dash-{uuid.uuid4()}"
        headers = {
            "ce-specversion": "1.0", "ce-id": ev_id, "ce-source": "/cemesh/browser-test",
            "ce-type": ev_type or self.args.event_type, "content-type": "application/json",
        }
        if self.args.ingress_token:
            headers["Authorization"] = f"Bearer {self.args.ingress_token}"
        url = f"{self.ingress}/{self.args.namespace}/{self.args.broker}"
        status, body = self.http(url, "POST", json.dumps({"from": "dashboard.py"}).encode(), headers)
        if status // 100 != 2:
            raise Failure(f"POST {url} answered {status}: {body[:300]!r}")
        self.posted.append(ev_id)
        return ev_id

    # ---- checks --------------------------------------------------------------

    def load(self):
        a = self.args
        self.driver.get(f"{self.admin}/ui/#/topology")
        self.wait("the dashboard to load (its nav)", lambda: self.visible(q("nav-topology")) or self.visible(q("nav-toggle")))
        if a.token:
            self.wait("the sign-in form (the admin API should answer 401 without a token)", lambda: self.visible(q("signin")))
            self.collect_console("sign-in form", allow_401=True)
            self.shot("signin")
            # A wrong token is refused and the form says so.
            self.driver.find_element(By.CSS_SELECTOR, q("signin-token")).send_keys("not-the-token-" + uuid.uuid4().hex)
            self.click(q("signin-submit"), "the sign-in button")
            self.wait("the sign-in form to refuse a wrong token", lambda: self.visible(q("signin-error")))
            self.collect_console("wrong token", allow_401=True)
            self.log("a wrong token is refused with a message")
            self.driver.find_element(By.CSS_SELECTOR, q("signin-token")).send_keys(a.token)
            self.click(q("signin-submit"), "the sign-in button")
            self.wait("the sign-in form to go away after the token", lambda: not self.visible(q("signin")))
            self.wait("the topology to show data after signing in", lambda: self.exists(q("topology-graph")) or self.visible(q("signin")))
            if self.visible(q("signin")):
                raise Failure(f"the token was refused: {self.js('return document.getElementById(arguments[0]).innerText', 'signin-error')}")
            if a.token in self.driver.current_url:
                raise Failure("the token appears in the page URL")
            if self.js("return sessionStorage.getItem('cemesh.token')") != a.token:
                raise Failure("the token is not kept in sessionStorage")
            if any(a.token in (self.js("return localStorage.getItem(arguments[0])", k) or "")
                   for k in self.js("return Object.keys(localStorage)")):
                raise Failure("the token was written to localStorage")
            self.collect_console("sign in", allow_401=True)
            self.log("signed in with the token; data shows")
        else:
            self.wait("the topology graph", lambda: self.exists(q("topology-graph")) or self.visible(q("signin")))
            if self.visible(q("signin")):
                raise Failure("the dashboard asks for a token but no --token was given")
        self.collect_console("load", allow_401=bool(a.token))
        self.log("page loaded without console errors")

    def topology(self):
        a = self.args
        node = q(tid("node", "trigger", a.namespace, a.expect_trigger))
        self.wait(f"trigger {a.namespace}/{a.expect_trigger} in the topology", lambda: self.exists(node))
        self.log(f"trigger {a.namespace}/{a.expect_trigger} is in the topology")
        if self.js("return document.documentElement.dataset.theme") != "light":
            self.click(q("theme-toggle"))
        self.wait("the light theme", lambda: self.js("return document.documentElement.dataset.theme") == "light")
        self.shot("topology-light")
        self.click(q("theme-toggle"), "the theme toggle")
        self.wait("the dark theme", lambda: self.js("return document.documentElement.dataset.theme") == "dark")
        if self.js("return localStorage.getItem('cemesh.theme')") != "dark":
            raise Failure("the theme choice is not kept in localStorage")
        self.shot("topology-dark")
        self.click(q("theme-toggle"))
        self.wait("the light theme again", lambda: self.js("return document.documentElement.dataset.theme") == "light")
        self.collect_console("topology")

    def counters(self):
        a = self.args
        broker = q(tid("node", "broker", a.namespace, a.broker))
        trigger = q(tid("node", "trigger", a.namespace, a.expect_trigger))
        self.wait(f"live counters on broker {a.namespace}/{a.broker} (from GET /v1/stats)",
                  lambda: self.attr(broker, "data-total") not in (None, ""))
        before = int(self.attr(broker, "data-total"))
        t_before = int(self.attr(trigger, "data-total") or 0)
        for _ in range(a.events):
            self.post_event()
        self.log(f"posted {a.events} events of type {a.event_type} to {a.namespace}/{a.broker}")
        self.wait(f"the broker's accepted counter to move from {before} by {a.events}",
                  lambda: int(self.attr(broker, "data-total") or 0) >= before + a.events)
        after = int(self.attr(broker, "data-total"))
        self.log(f"broker counter moved {before} -> {after} in the topology")
        if a.check_delivered:
            self.wait(f"trigger {a.expect_trigger}'s delivered counter to move from {t_before} by {a.events}",
                      lambda: int(self.attr(trigger, "data-total") or 0) >= t_before + a.events)
            self.log(f"trigger counter moved {t_before} -> {self.attr(trigger, 'data-total')}")
        card = q(tid("metric", "broker", a.namespace, a.broker))
        self.route("metrics", card, "the broker's card on the Metrics view")
        self.wait("the Metrics view's counter to include the posted events",
                  lambda: int(self.attr(card, "data-total") or 0) >= before + a.events)
        self.log("the Metrics view shows the new total")
        self.shot("metrics", full=True)
        self.collect_console("counters")

    def event_types(self):
        a = self.args
        row = f'{q("type-row")}[data-type="{a.event_type}"]'
        self.route("types", q("types"), "the event types view")
        self.wait(f"type {a.event_type} among the event types", lambda: self.exists(row))
        self.log(f"the event types view lists {a.event_type}")
        self.shot("types", full=True)
        self.collect_console("event types")

    def resource_detail(self):
        a = self.args
        self.route("resources", q("res-table-triggers"), "the resources tables")
        self.wait(f"trigger {a.expect_trigger} in the triggers table",
                  lambda: self.exists(q(tid("res-row", "triggers", a.namespace, a.expect_trigger))))
        self.shot("resources", full=True)
        # A click on the trigger's node in the topology opens its detail.
        node = q(tid("node", "trigger", a.namespace, a.expect_trigger))
        self.route("topology", node, "the trigger's node")
        self.js("document.querySelector(arguments[0]).scrollIntoView({block: 'center', inline: 'center'})", node)
        self.click(node, "the trigger's node")
        self.wait("the trigger's detail after clicking its node",
                  lambda: self.js("return location.hash") == f"#/resources/triggers/{a.namespace}/{a.expect_trigger}")
        self.wait("the trigger's conditions", lambda: self.exists(q("detail-condition")))
        self.wait("the trigger's owner", lambda: self.attr(q("detail-owner"), "data-owner") not in (None, ""))
        self.wait("the trigger's live charts", lambda: self.exists(q("chart-delivery")) and self.exists(q("chart-latency")))
        self.wait("the trigger's manifest", lambda: "spec:" in (self.js(f"return document.querySelector('{q('detail-manifest')}').textContent") or ""))
        self.log(f"resource detail shows conditions, owner ({self.attr(q('detail-owner'), 'data-owner')}), manifest and charts")
        self.shot("resource-detail", full=True)
        self.collect_console("resource detail")

    def deadletters(self):
        a = self.args
        name = a.deadletter_trigger
        self.route("deadletters", q("dl-trigger"), "the dead letters view")
        value = f"{a.namespace}/{name}"
        self.pick("dl-trigger", value, "the dead letters picker")
        row_sel = (f'{q("dl-row")}[data-event-id="{a.deadletter_event_id}"]' if a.deadletter_event_id else q("dl-row"))

        last_refresh = [time.time()]

        def listed():
            if self.exists(row_sel):
                return True
            if time.time() - last_refresh[0] > 2 and self.exists(q("dl-refresh")):
                last_refresh[0] = time.time()
                self.click(q("dl-refresh"))
            return False
        self.wait(f"a dead letter of {value} in the list", listed)
        letter = self.attr(row_sel, "data-id")
        event_id = self.attr(row_sel, "data-event-id")
        row = f'{q("dl-row")}[data-id="{letter}"]'
        self.click(f"{row} {q('dl-expand')}", "the attempts toggle")
        self.wait("the letter's attempts", lambda: self.visible(q("dl-attempt")))
        self.shot("deadletters")
        # Cancelled: nothing happens.
        self.click(f"{row} {q('dl-redrive')}", "the redrive button")
        self.wait("the confirmation dialog", lambda: self.js("return document.getElementById('confirm').open"))
        self.shot("deadletters-confirm")
        self.click(q("confirm-cancel"), "the dialog's cancel button")
        self.wait("the dialog to close", lambda: not self.js("return document.getElementById('confirm').open"))
        if not self.exists(row) or self.attr(q("dl-result"), "data-outcome"):
            raise Failure("cancelling the redrive dialog still did something")
        # Confirmed: redriven, reported, gone from the list.
        self.click(f"{row} {q('dl-redrive')}", "the redrive button")
        self.wait("the confirmation dialog", lambda: self.js("return document.getElementById('confirm').open"))
        self.click(q("confirm-ok"), "the dialog's confirm button")
        self.wait("the redrive's outcome", lambda: self.attr(q("dl-result"), "data-outcome") not in (None, ""))
        outcome = self.attr(q("dl-result"), "data-outcome")
        text = self.js(f"return document.querySelector('{q('dl-result')}').innerText")
        if outcome != "delivered":
            raise Failure(f"redriving dead letter {letter} (event {event_id}) did not deliver it: {text}")
        self.wait("the redriven letter to leave the list", lambda: not self.exists(row))
        self.log(f"dead letter {letter} (event {event_id}) redriven from the UI: {text}")
        print(f"REDRIVEN {event_id}", flush=True)
        if a.redrive_marker:
            with open(a.redrive_marker, "w") as f:
                json.dump({"trigger": value, "deadLetter": int(letter), "eventId": event_id, "outcome": outcome}, f)
        self.redriven = event_id
        self.collect_console("dead letters")

    def tail(self):
        a = self.args
        self.route("tail", q("tail-broker"), "the live tail view")
        self.pick("tail-broker", f"{a.namespace}/{a.broker}", "the tail picker")
        self.click(q("tail-start"), "the tail's start button")
        self.wait("the tail to be live", lambda: self.attr(q("tail-status"), "data-state") == "live")
        ev_id = self.post_event(ev_type=f"{a.event_type}.tail")
        self.wait(f"event {ev_id} in the live tail", lambda: self.exists(f'{q("tail-row")}[data-id="{ev_id}"]'))
        self.log(f"the live tail shows event {ev_id}")
        self.click(q("tail-pause"), "the tail's pause button")
        paused_id = self.post_event(ev_type=f"{a.event_type}.tail")
        self.wait("the tail to hold events while paused", lambda: "held" in (self.js(f"return document.querySelector('{q('tail-status')}').innerText") or ""))
        if self.exists(f'{q("tail-row")}[data-id="{paused_id}"]'):
            raise Failure("the paused tail still added an event")
        self.click(q("tail-pause"), "the tail's resume button")
        self.wait("held events to show on resume", lambda: self.exists(f'{q("tail-row")}[data-id="{paused_id}"]'))
        self.shot("tail")
        self.collect_console("tail")

    def journey(self):
        a = self.args
        ev_id = a.journey_id or (self.posted[0] if a.check_delivered and self.posted else None) or getattr(self, "redriven", None)
        if not ev_id:
            self.log("journey skipped: no --journey-id, --check-delivered or --deadletter-trigger")
            return
        broker = a.journey_broker or a.broker
        path = f"/v1/namespaces/{a.namespace}/brokers/{broker}/journey/{urllib.parse.quote(ev_id, safe='')}"
        if a.journey_source:
            path += f"?source={urllib.parse.quote(a.journey_source, safe='')}"
        # Wait until the journal has an attempt with a status, so the page never meets a 404.
        deadline = time.time() + a.timeout
        while True:
            status, body = self.admin_get(path)
            if status == 200 and any(at.get("status") for t in body.get("triggers", []) for at in t.get("attempts") or []):
                break
            if time.time() > deadline:
                raise Failure(f"GET {path} has no attempt with a status after {a.timeout}s: {status} {body}")
            time.sleep(0.3)
        self.route("journey", q("journey-form"), "the journey form")
        for key, val in (("ns", a.namespace), ("broker", broker), ("id", ev_id), ("source", a.journey_source or "")):
            el = self.driver.find_element(By.CSS_SELECTOR, q(f"journey-{key}"))
            el.clear()
            if val:
                el.send_keys(val)
        self.click(q("journey-submit"), "the journey's submit button")
        self.wait(f"an attempt row with a status in the journey of {ev_id}",
                  lambda: self.js("return [...document.querySelectorAll('[data-test=journey-attempt]')].some(r => r.dataset.status !== '')"))
        self.wait("the journey's accepted step", lambda: self.exists(q("journey-accepted")))
        n = self.js("return document.querySelectorAll('[data-test=journey-attempt]').length")
        self.log(f"the journey of {ev_id} shows {n} attempt row(s)")
        self.shot("journey", full=True)
        self.collect_console("journey")

    def phone(self):
        # A phone's viewport (Chromium will not shrink a window below 500 px).
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        self.route("topology", q("topology-graph"), "the topology at 390 px")
        if self.js("return window.innerWidth") != 390:
            raise Failure(f"could not emulate a 390 px viewport (innerWidth {self.js('return window.innerWidth')})")
        if self.visible("#nav a") or not self.visible(q("nav-toggle")):
            raise Failure("at 390 px the nav should fold behind its Menu button")
        wide = self.js("return document.documentElement.scrollWidth")
        if wide > self.js("return window.innerWidth") + 1:
            raise Failure(f"at 390 px the page scrolls sideways ({wide} px wide): the graph and tables should scroll inside")
        self.shot("topology-phone")
        self.click(q("nav-toggle"), "the Menu button")
        self.wait("the nav to open", lambda: self.visible(q("nav-deadletters")))
        self.shot("nav-phone")
        self.click(q("nav-resources"), "the Resources link")
        self.wait("the resources at 390 px", lambda: self.exists(q("res-table-triggers")))
        wide = self.js("return document.documentElement.scrollWidth")
        if wide > self.js("return window.innerWidth") + 1:
            raise Failure(f"at 390 px the resources page scrolls sideways ({wide} px wide)")
        self.shot("resources-phone")
        self.log("at 390 px the nav folds and nothing scrolls sideways")
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.collect_console("phone")

    def sign_out(self):
        if not self.args.token:
            return
        self.route("topology", q("signout"), "the sign-out button")
        self.click(q("signout"), "the sign-out button")
        self.wait("the sign-in form after signing out", lambda: self.visible(q("signin")))
        if self.js("return sessionStorage.getItem('cemesh.token')"):
            raise Failure("signing out left the token in sessionStorage")
        self.log("signed out: the token is gone and the sign-in form is back")
        self.collect_console("sign out", allow_401=True)

    def run(self):
        a = self.args
        self.load()
        self.topology()
        self.counters()
        self.event_types()
        self.resource_detail()
        if a.deadletter_trigger:
            self.deadletters()
        self.tail()
        self.journey()
        self.phone()
        self.sign_out()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin", required=True, help="the admin URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--ingress", required=True, help="the ingress URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--out", required=True, help="folder for the screenshots")
    p.add_argument("--token", help="the admin API's bearer token: expect the sign-in form and use it")
    p.add_argument("--ingress-token", help="a sender token for the ingress, if it needs one")
    p.add_argument("--namespace", default="default")
    p.add_argument("--broker", default="default", help="the broker the events go to")
    p.add_argument("--expect-trigger", required=True, help="a trigger of --broker that must be in the topology")
    p.add_argument("--event-type", default="dev.cemesh.dashboard.test", help="type of the events posted")
    p.add_argument("--events", type=int, default=5, help="how many events to post for the counters check")
    p.add_argument("--check-delivered", action="store_true",
                   help="--event-type matches --expect-trigger: its delivered counter must move too")
    p.add_argument("--deadletter-trigger", help="redrive a dead letter of this trigger (of --namespace)")
    p.add_argument("--deadletter-event-id", help="the event id of the dead letter to redrive (else the first listed)")
    p.add_argument("--redrive-marker", help="file to write the redriven letter as JSON: trigger, deadLetter, eventId, outcome")
    p.add_argument("--journey-id", help="an event id whose journey must show attempts")
    p.add_argument("--journey-source", help="its source, when ids collide")
    p.add_argument("--journey-broker", help="its broker (default --broker)")
    p.add_argument("--timeout", type=float, default=20, help="seconds each wait may take")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    missing = [p for p in (args.chromium, args.chromedriver) if not os.path.exists(p)]
    if missing:
        print(f"SKIP: not installed: {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)", file=sys.stderr)
        return 77
    try:
        d = Dashboard(args)
    except Exception as e:  # noqa: BLE001 - a browser that does not start is a failure to report
        print(f"FAIL: cannot start Chromium ({args.chromium}) with {args.chromedriver}: {e}", file=sys.stderr)
        return 1
    try:
        d.run()
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        try:
            d.shot("failure")
        except Exception:  # noqa: BLE001
            pass
        return 1
    finally:
        d.driver.quit()
    print(f"PASS: dashboard checks in {time.time() - started:.1f}s; screenshots in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
