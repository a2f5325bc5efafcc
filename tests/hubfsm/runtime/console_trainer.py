"""A small custom trainer for the console tests: what a person runs, and reads on stderr.

Usage: console_trainer.py EPOCHS (the hub in ULTRALYTICS_HUB_API, the key in HUB_API_KEY)

It prints ``epoch N`` on stdout after logging each epoch and then waits for a line on
standard input before the next, so the test decides when the hub goes away and comes
back. ``finishing`` comes before ``finish()``. A refusal and Ctrl-C end it with exit
status 3 and 130 without a traceback, so that standard error holds only what hubfsm says.
"""

import sys
from pathlib import Path

import hubfsm
from hubfsm.core.config import CoreConfig

# The shipped behaviour a hundred times as fast: retries within milliseconds.
CONFIG = CoreConfig().scaled(0.01)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    epochs = int(sys.argv[1])
    weights = Path("last.pt")
    weights.write_bytes(b"weights of a tiny model\n" * 64)
    try:
        with hubfsm.Session(
            "yolov8n.yaml", train_args={"data": "coco8.yaml"}, config=CONFIG, exit_timeout=1.0
        ) as session:
            for epoch in range(epochs):
                session.log_metrics({"train/loss": 1.0 / (epoch + 1)}, epoch=epoch)
                session.save_checkpoint(weights, epoch=epoch)
                say(f"epoch {epoch}")
                sys.stdin.readline()
            say("finishing")
            session.finish(weights, map50_95=0.5)
    except hubfsm.HubError as exc:
        say(f"refused: {type(exc).__name__}")
        return 3
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
