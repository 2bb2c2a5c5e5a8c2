"""Drives a test app (flask_app.py, fastapi_app.py) through one scenario of light and
2x heavy requests, and prints what it got back as JSON.

  sequential   light, heavy, light, ... one at a time
  pairs        a light and a heavy request in flight together, ROUNDS times
  waiting      a request that waits UNIT seconds beside a heavy one, ROUNDS times

PATH is the work endpoint (/work, /async_work) and WAIT the waiting one (/wait,
/async_wait). A pause between rounds leaves idle time in the timelines.

usage: server_load.py URL SCENARIO ROUNDS UNIT PATH WAIT
Prints {"requests": [{"kind": light|heavy|waiting, "span_id", "cpu_s"}...]}.
"""
import json
import sys
import threading
import time
import urllib.request


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def wait_until_up(base):
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def main():
    base, scenario, rounds, unit, path, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
    wait_until_up(base)
    urls = {
        "light": f"{base}{path}?cpu={unit}",
        "heavy": f"{base}{path}?cpu={2 * unit}",
        "waiting": f"{base}{wait}?s={unit}",
    }
    done = []
    lock = threading.Lock()

    def one(kind):
        r = get(urls[kind])
        r["kind"] = kind
        with lock:
            done.append(r)

    for _ in range(rounds):
        if scenario == "sequential":
            one("light")
            time.sleep(0.1)
            one("heavy")
        else:
            other = "light" if scenario == "pairs" else "waiting"
            threads = [threading.Thread(target=one, args=(k,)) for k in ("heavy", other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        time.sleep(0.3)
    print(json.dumps({"requests": done}), flush=True)


if __name__ == "__main__":
    main()
