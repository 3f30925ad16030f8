"""The bench's harness: what every scenario measures with, one concern a module.

- ``paths``: where the checkout, its .venv, the peers and the results are
- ``units``: sizes and their command-line form
- ``errors``: BenchError (broke), ScenarioSkipped (cannot run here)
- ``context``: Ctx, the options, work directories and random payload a scenario gets
- ``servers``: the peers (pytusd and its variants, pytusd-baseline, tusd, @tus/server, the raw sink): how each is
  started, a running one stopped by its PID, a fresh one per measurement
- ``proc``: /proc accounting (CPU, faults, memory, fds, connections per worker, steal, busy time, mounts)
- ``machine``: waiting for a quiet machine, prefaulting memory, the machine's description for the JSON
- ``client``: the raw-socket HTTP/1.1 client of the big uploads and its tus POST and PATCHes
- ``loadclient``: the many-connection asyncio client of the small and slow requests
- ``stats``: round order, medians, new-over-old ratios
- ``report``: verdicts, skipped servers, a scenario's printed table
"""
