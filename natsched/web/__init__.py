"""``natsched web``: a dashboard in the browser, fed live from NATS.

It holds no scheduler state of its own: every page is read from the buckets, streams
and admin API that exist (``reads.py``), updates are pushed to the browser with
Server-Sent Events (``live.py``), and actions go through the admin API (``app.py``).
Logins, sessions and CSRF live in ``auth.py``; the pages are static files in ``static/``.
"""
