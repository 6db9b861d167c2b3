"""`ray job submit --working-dir . -- python jobs/preprocess.py ...`: same flags as `raypipe preprocess`."""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
