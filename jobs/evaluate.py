"""`ray job submit --working-dir . -- python jobs/evaluate.py ...`: same flags as `raypipe evaluate`."""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
