"""Opens a session, logs, then ends in the way argv[3] says (for the exit tests)."""

import os
import signal
import sys

import hubfsm
from hubfsm.core.config import CoreConfig, Limits

api, model_id, how = sys.argv[1:4]
if how == "signal":
    def user_handler(signum, frame):
        print("user handler ran", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, user_handler)

session = hubfsm.Session(model_id, api_root=api, web_root=api, exit_timeout=3.0,
                         config=CoreConfig(limits=Limits(metrics=0.01)),
                         handle_signals=(how == "signal"))
session.start()
for epoch in range(3):
    session.log_metrics({"loss": 1.0 / (epoch + 1)})
if how == "signal":
    os.kill(os.getpid(), signal.SIGTERM)
    print("not reached", flush=True)
# "exit": leave without close(); the interpreter's exit flushes
