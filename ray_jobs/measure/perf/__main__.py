import sys

from ray_jobs.measure.perf.cli import main

if __name__ == "__main__":  # not when a spawned child (the MLflow logger, DP memory) imports it
    sys.exit(main())
