"""Hands-on runs of the whole system on one machine (``python -m lab.demo``). Unlike
``cloud``, this package may import everything: it plays the cluster operator."""
