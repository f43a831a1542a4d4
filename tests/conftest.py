"""Test-wide settings: hypothesis without per-example deadlines.

Timing is not what these tests assert (speed lives in bench/), and a deadline turns a busy CI
machine into spurious failures.  ``@settings(...)`` in the tests inherit this profile.
"""

from hypothesis import settings

settings.register_profile("useful-sb", deadline=None, print_blob=True)
settings.load_profile("useful-sb")
