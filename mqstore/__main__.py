"""``python -m mqstore``: the same as the ``mqstore`` console script (the demo's workers are
started this way, so they run the same interpreter as the demo)."""

from .cli import main

raise SystemExit(main())
