"""``python -m fastlstm``: the command line.

``info``   fastlstm's configuration: versions, BLAS library, kernel family, threads.
"""
import argparse
import sys


def _info(args):
    from . import show_config

    show_config()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastlstm",
        description="fastlstm: fast CPU training of LSTMs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    info = commands.add_parser("info", help="show versions, BLAS kernels and threads")
    info.set_defaults(run=_info)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
