"""Sub-commands of `nudge`; each module exposes `register(subparsers)` (see engine/cli.py)."""
