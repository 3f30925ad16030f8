"""The targets the scenarios' verdicts check."""

from __future__ import annotations


# The targets of issue 9 ("Performance: ahead of every peer, close to what the machine can do").
TARGET_RATIO = 3.0  # scenario 1: pytusd >= 3x @tus/server throughput
TARGET_RAW_SINK = 0.7  # scenario 1: pytusd >= 70% of the raw sink's throughput
TARGET_SMALL_RATIO = 1.5  # scenario 2: pytusd >= 1.5x @tus/server requests/s, with a lower p99
TARGET_SLOW_RSS_MB = 300.0  # scenario 3: pytusd under 300 MB RSS with 1,000 uploads open, no request failing
TARGET_S3_RATIO = 0.8  # scenario 4: pytusd >= 0.8x boto3's own throughput to the same gateway
TARGET_SCALING = 0.8  # scenario 5: --workers N >= 0.8 x N x one worker's throughput ("close to linear"), N <= cores

# The targets of issue 17 against tusd (medians in one run, pytusd / tusd); rustus is held to the same ones.
TARGET_TUSD_BIG = 1.5  # scenario 1: big uploads, pytusd >= 1.5x tusd's MB/s
TARGET_TUSD_SMALL = 1.0  # scenario 2: small uploads, pytusd >= 1.0x tusd's req/s ...
TARGET_TUSD_P99 = 1.0  # ... with a p99 latency no worse (pytusd p99 / tusd p99 <= 1.0); the HEAD load too
TARGET_TUSD_HEAD = 1.0  # scenario 2: HEAD of an existing upload under the same load, pytusd >= 1.0x tusd's req/s
TARGET_TUSD_SLOW_RSS = 1.0  # scenario 3: 1,000 slow uploads open, pytusd peak RSS / tusd peak RSS <= 1.0
TARGET_TUSD_S3 = 1.0  # scenario 4: S3 store against the same Ceph gateway, pytusd >= 1.0x tusd's MB/s
TARGET_TUSD_WORKERS = 1.0  # scenario 5: pytusd >= 1.0x tusd at the same cores (both loads)
