"""Benchmarks: ztb's data and control plane as ratios against the usual rule-per-grant way.

``python -m lab.bench --quick|--full`` runs every measurement in :data:`registry.MEASUREMENTS`
inside namespaces it creates, writes ``bench-results.json`` and prints a markdown table.
"""
