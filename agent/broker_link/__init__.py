"""The agent's link to the broker.

- ``http_lite.py``: the daemon's two calls (long-poll, report) on the standard library;
- ``source.py``: the long-poll and report threads feeding the run loop;
- ``cert_client.py``, ``enroll.py``, ``renew_once.py``: enrollment and certificate renewal
  (httpx and ``cryptography``), in short-lived processes only.

Nothing is imported here: the daemon must not load httpx or ``cryptography``.
"""
