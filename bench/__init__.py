"""fluxq's benchmarks: ``python -m bench throughput`` is the project's headline figure.

``bench_simulator.py`` measures the simulator alone.
"""
