"""``chtorch configs``: the shipped configs, listed with a line each, and copied out to edit.

    chtorch configs                          name and one-line description of every shipped config
    chtorch configs copy NAME [DEST] [--force]   write NAME.yaml (to DEST: a file or a folder) to edit

A shipped name is accepted wherever a config file is (``chtorch train mlp_mnist_cpu``); see
:mod:`chtorch.config.shipped`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_configs_parser", "cmd_configs"]


def add_configs_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``configs`` command to the ``chtorch`` parser's subcommands ``sub``."""
    p = sub.add_parser(
        "configs",
        help="list the shipped configs, or copy one out to edit",
        description="List the configs shipped with chtorch (the paper's settings and CPU-sized variants). "
        "A shipped name works wherever a config file does: `chtorch train mlp_mnist_cpu`.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    copy = actions.add_parser(
        "copy",
        help="write a shipped config to a file to edit",
        description="Write the shipped config NAME to DEST (a file, or a folder to hold NAME.yaml; default: "
        "./NAME.yaml). An existing file is kept unless --force.",
    )
    copy.add_argument("name", metavar="NAME", help="a shipped config's name (`chtorch configs` lists them)")
    copy.add_argument("dest", metavar="DEST", nargs="?", help="file or folder to write (default: ./NAME.yaml)")
    copy.add_argument("--force", action="store_true", help="overwrite DEST if it exists")


def cmd_configs(args: argparse.Namespace) -> int:
    """Run ``chtorch configs [copy ...]``."""
    from chtorch.config import ConfigError
    from chtorch.config.shipped import copy_config, describe_config, shipped_configs, shipped_dir

    if args.action == "copy":
        target = copy_config(args.name, args.dest, force=args.force)
        print(f"wrote {target}   # edit it, then: chtorch train {target}")
        return 0
    configs = shipped_configs()
    if not configs:
        raise ConfigError("this chtorch installation ships no configs (reinstall it from a wheel or a checkout)")
    width = max(len(name) for name in configs)
    for name, path in configs.items():
        print(f"{name.ljust(width)}  {describe_config(path)}")
    print(f"\n(in {shipped_dir()}) run one: chtorch train NAME; edit one: chtorch configs copy NAME [DEST]")
    return 0
