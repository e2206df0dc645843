"""The load tool (``scripts/loadtest.py``) as a package, one job per module:

- ``options``: the command line and its checks;
- ``cluster``: reaching the cluster (URLs, logins or minted tokens, health, the checks before a run);
- ``wire``: WebSocket frames (to send; found in what a server sent);
- ``client``: the lean asyncio WebSocket client (wss://, the checks before a run, chaoslib, tests);
- ``link``: the worker's connections on plain sockets, read by one poller, stamped by the kernel;
- ``scenarios``: who sends what to whom (the users of each scenario, the texts, the frames);
- ``users``: a worker's users: logging in, connecting, joining, closing;
- ``stats``: latency samples, loss and duplicate accounting, merging the workers' parts;
- ``pacing``: a worker's sends on their schedule, one timer (pulse) for all its senders;
- ``worker``: one load process: its steps, and what each arriving frame means;
- ``parent``: the process that starts the workers and steps them through the run;
- ``report``: the live line, the report (JSON), the table and the plot.

``scripts/loadtest.py`` imports it as ``loadlib`` (``scripts/`` is on the path of a script run
from there), ``benchmarks/run.py`` for the helpers it shares, and the unit tests as
``scripts.loadlib``: the modules import each other relatively, so both names work.
"""
