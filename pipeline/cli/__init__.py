"""The ``python -m pipeline`` commands' parts (the parser itself is ``pipeline/__main__.py``).

``support`` (what every command shares), ``status``, ``streams`` (news and fundamentals),
``serve`` (start the dashboard). Same layer as the workers they start.
"""
