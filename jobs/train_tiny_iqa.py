"""`ray job submit --working-dir . -- python jobs/train_tiny_iqa.py --config CONFIG [key=value ...]`."""
from rayiqa.cli import job_main

if __name__ == "__main__":
    job_main(["train", "tiny-iqa"])
