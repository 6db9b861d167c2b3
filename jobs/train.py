"""`ray job submit --working-dir . -- python jobs/train.py ...`: same flags as `raypipe train`."""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
