"""``python -m hubfsm``."""

from hubfsm.cli.main import main

raise SystemExit(main())
