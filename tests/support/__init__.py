"""What tests share, defined once: keys and environments, waiting, the simulator fixture factory,
the inline pipeline, worker clusters, the embedded Redis helpers and a real S3 server.

Conftests and tests import from here, never from one another:

* ``env``: the test KEY, ``clean_env``, ``scrub_env``, ``settings_for``;
* ``net``: ``free_port``, ``wait_until``;
* ``simulator``: ``simulator_fixture`` (one simulator fixture for any scope and config);
* ``pipeline``: ``Pipeline`` and its fixtures (fluxq.testing's dispatcher on the simulator);
* ``cluster``: ``Cluster``, ``cluster_env``, ``FAST_ENV`` and the ``make_cluster`` fixture;
* ``embedded``: real ``fluxq`` processes on the shared embedded Redis, stopped by pid;
* ``webhooks``: a loopback receiver that records webhook POSTs;
* ``s3``: moto's S3 server as a process of its own.
"""
