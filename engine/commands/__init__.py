"""Sub-commands of `nudge`, one module each, discovered by `engine.cli`: each exposes `register(subparsers)`, parses
its arguments, calls a package and prints. Thin on purpose: behaviour lives in the packages.

May import any package of `engine`; nothing but `engine.cli` imports these modules.
"""
