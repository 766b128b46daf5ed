"""The cloud boundary: a narrow Protocol over the EC2 calls underlay uses, its boto3
adapter, the instance metadata client and the IAM policy it needs.

Imports neither ``ipam_daemon`` nor ``cni``.
"""
