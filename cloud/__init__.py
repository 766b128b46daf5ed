"""The cloud boundary: a narrow Protocol over the EC2 calls underlay uses, its boto3
adapter, and the embedded emulated cloud (``cloud.emulator``).

Imports neither ``ipam_daemon`` nor ``cni``.
"""
