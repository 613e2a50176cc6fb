"""Where things are in a LeRobot v3 dataset: the relative paths of its metadata.

The data and video files are found through ``meta/info.json``'s path templates and the
episodes table, never by listing directories (:mod:`common.dataset.reader`).
"""

from __future__ import annotations

INFO_FILE = "meta/info.json"
TASKS_FILE = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
