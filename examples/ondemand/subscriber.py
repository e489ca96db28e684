#!/usr/bin/env python3
"""An on-demand CloudEvents subscriber: cemesh starts it when events wait, scales it
out under load and stops it when idle (see README "Local scale-to-zero").

Standard library only. Configured by environment variables:
  PORT            port to listen on (cemesh picks it; see `port_env`)
  HOST            address to listen on, default 127.0.0.1 (0.0.0.0 in a container)
  CEMESH_INSTANCE instance number cemesh gave this process (for the log)
  STARTUP_DELAY   seconds before /healthz answers 200 (a slow cold start), default 0
  WORK_DELAY      seconds each event takes, default 0
  RECORD_FILE     append "<instance> <ce-id>" per event taken (tests read it)
  CRASH_FILE      if this file exists when an event arrives: delete it and exit(3)
                  at once, without answering (a crash mid-burst, for tests)
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))
HOST = os.environ.get("HOST", "127.0.0.1")
INSTANCE = os.environ.get("CEMESH_INSTANCE", "0")
STARTUP_DELAY = float(os.environ.get("STARTUP_DELAY", "0"))
WORK_DELAY = float(os.environ.get("WORK_DELAY", "0"))
RECORD_FILE = os.environ.get("RECORD_FILE")
CRASH_FILE = os.environ.get("CRASH_FILE")

started = time.monotonic()
record_lock = threading.Lock()


def log(msg):
    print(msg, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep cemesh's log to what matters
        pass

    def _answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            ready = time.monotonic() - started >= STARTUP_DELAY
            self._answer(200 if ready else 503, b"ok" if ready else b"starting")
        else:
            self._answer(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        event_id = self.headers.get("ce-id", "?")
        if CRASH_FILE:
            try:
                os.remove(CRASH_FILE)
                log(f"crashing on purpose while handling {event_id}")
                os._exit(3)
            except FileNotFoundError:
                pass
        if WORK_DELAY:
            time.sleep(WORK_DELAY)
        if RECORD_FILE:
            with record_lock, open(RECORD_FILE, "a") as f:
                f.write(f"{INSTANCE} {event_id}\n")
        self._answer(202)


def exit_when_orphaned(parent):
    # If cemesh dies without stopping us (kill -9), do not linger.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main():
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        log("SIGTERM: stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    log(f"instance {INSTANCE} listening on {HOST}:{PORT}")
    server.serve_forever()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
