"""The dataset splits every stage agrees on (ingest writes them, validate checks them, preprocess converts them)."""

SPLITS = ("train", "val", "test", "stream")
REQUIRED_SPLITS = ("train", "val", "test")  # the pipeline cannot train or evaluate without these
OPTIONAL_SPLITS = ("stream",)  # held out for the monitoring loop; may be empty
