import sys

from agent.cli.entry import run

sys.exit(run())
