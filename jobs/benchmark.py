"""`ray job submit --working-dir . -- python jobs/benchmark.py ...`: same flags as `raypipe benchmark`.

One protocol (every fold) in one job: preprocess what is missing, train, dev threshold, test, MLflow.
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
