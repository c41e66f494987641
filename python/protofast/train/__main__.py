"""``python -m protofast.train``: the ``protofast-train`` command line."""

from .cli import run

if __name__ == "__main__":
    run()
