"""Integrations with training frameworks.

- :mod:`hubfsm.integrations.ultralytics`: callbacks for ultralytics' trainers
  (``add_callbacks(model)``), in place of ultralytics' own HUB callbacks, and
  ``install()``, which makes ultralytics 8.2/8.3 use hubfsm's ``HUBTrainingSession``
  (:mod:`hubfsm.integrations.ultralytics_hub`) so ``YOLO(model_url).train()`` runs
  through hubfsm.
- :mod:`hubfsm.integrations.callbacks`: :class:`~hubfsm.integrations.callbacks.TrainingCallbacks`
  for any other training loop.

None imports a framework at import time: only ``install()`` imports ultralytics, when called.
"""

from __future__ import annotations
