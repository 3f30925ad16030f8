"""The targets the scenarios' verdicts check."""

from __future__ import annotations


# The targets of issue 9 ("Performance: ahead of every peer, close to what the machine can do").
TARGET_RATIO = 3.0  # scenario 1: pytusd >= 3x @tus/server throughput
TARGET_RAW_SINK = 0.7  # scenario 1: pytusd >= 70% of the raw sink's throughput
TARGET_SMALL_RATIO = 1.5  # scenario 2: pytusd >= 1.5x @tus/server requests/s, with a lower p99
TARGET_TUSD_RATIO = 1.0  # scenarios 1 and 2: "ahead of every peer": pytusd >= tusd's MB/s and req/s (lower p99)
TARGET_SLOW_RSS_MB = 300.0  # scenario 3: pytusd under 300 MB RSS with 1,000 uploads open, no request failing
TARGET_S3_RATIO = 0.8  # scenario 4: pytusd >= 0.8x boto3's own throughput to the same gateway
TARGET_SCALING = 0.8  # scenario 5: --workers N >= 0.8 x N x one worker's throughput ("close to linear"), N <= cores
