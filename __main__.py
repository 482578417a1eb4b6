"""``python -m xpusim``."""

from .cli import main

raise SystemExit(main())
