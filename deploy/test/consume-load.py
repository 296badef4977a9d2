#!/usr/bin/env python3
"""Consume load through the edge for the deployment test (deploy/test-compose.sh).

Sends COUNT consumes of one unit of METRIC, each with its own idempotency key, from THREADS
threads paced to last about SECONDS, while the test restarts a quota-svc replica. A call the edge
answers with anything but 200 (a stopped replica's share answers 503), or that fails to connect,
is retried with the same key, as a client must: the key makes the retry exactly-once. Prints one
JSON object: how many were sent, succeeded on the first attempt, succeeded after retries, failed
for good, were replayed, and were denied.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

base, token, metric, count, threads, seconds = sys.argv[1:7]
count, threads, seconds = int(count), int(threads), float(seconds)
RETRIES = 40
run_id = f"{time.time_ns():x}"
lock = threading.Lock()
totals = {"sent": 0, "first_try": 0, "after_retry": 0, "retries": 0, "failed": 0,
          "replayed": 0, "denied": 0, "statuses": {}}


def consume(key):
    request = urllib.request.Request(
        f"{base}/v1/quotas/{metric}:consume",
        data=json.dumps({"idempotencyKey": key}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError) as err:
        return f"error: {err}", None


def worker(index):
    per_thread = range(index, count, threads)
    pause = seconds / max(1, len(per_thread))
    for n in per_thread:
        key = f"deploy-test-{run_id}-{n}"
        outcome, attempts = None, 0
        while attempts <= RETRIES:
            attempts += 1
            status, body = consume(key)
            if status == 200:
                outcome = body
                break
            with lock:
                totals["statuses"][str(status)] = totals["statuses"].get(str(status), 0) + 1
            time.sleep(0.25)
        with lock:
            totals["sent"] += 1
            totals["retries"] += attempts - 1
            if outcome is None:
                totals["failed"] += 1
            elif not outcome.get("allowed"):
                totals["denied"] += 1
            else:
                totals["first_try" if attempts == 1 else "after_retry"] += 1
                if outcome.get("replayed"):
                    totals["replayed"] += 1
        time.sleep(pause)


workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
started = time.monotonic()
for thread in workers:
    thread.start()
for thread in workers:
    thread.join()
totals["seconds"] = round(time.monotonic() - started, 1)
print(json.dumps(totals))
