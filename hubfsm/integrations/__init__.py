"""Integrations with training frameworks.

- :mod:`hubfsm.integrations.ultralytics`: callbacks for ultralytics' trainers
  (``add_callbacks(model)``), in place of ultralytics' own HUB callbacks.
- :mod:`hubfsm.integrations.callbacks`: :class:`~hubfsm.integrations.callbacks.TrainingCallbacks`
  for any other training loop.

Neither imports a framework: ultralytics is only used if it is installed.
"""

from __future__ import annotations
