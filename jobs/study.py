"""`ray job submit --working-dir . -- python jobs/study.py --config CONFIG [key=value ...]`."""
from rayiqa.cli import job_main

if __name__ == "__main__":
    job_main(["eval", "study"])
