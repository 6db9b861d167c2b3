"""`ray job submit --working-dir . -- python jobs/pipeline.py ...`: same flags as `raypipe pipeline`.

Preprocess, train, evaluate, register and promote in one job.
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
