"""Integrations with training frameworks.

- :mod:`hubfsm.integrations.ultralytics`: callbacks for ultralytics' trainers
  (``add_callbacks(model)``, bound by
  :mod:`~hubfsm.integrations.ultralytics_callbacks`), in place of ultralytics' own HUB
  callbacks, and ``install()`` (in the same module), which makes ultralytics 8.2/8.3
  use hubfsm's ``HUBTrainingSession`` (:mod:`hubfsm.integrations.ultralytics_session`),
  so ``YOLO(model_url).train()`` runs through hubfsm, and ultralytics 8.4 hubfsm's
  Platform callbacks (:mod:`hubfsm.integrations.ultralytics_platform`). What these read
  from ultralytics' objects is in :mod:`hubfsm.integrations.ultralytics_objects`.
- :mod:`hubfsm.integrations.callbacks`: :class:`~hubfsm.integrations.callbacks.TrainingCallbacks`
  for any other training loop.

None imports a framework at import time: only ``install()`` imports ultralytics, when called.
"""

from __future__ import annotations
