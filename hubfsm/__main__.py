"""``python -m hubfsm``."""

from hubfsm.cli import main

raise SystemExit(main())
