"""The cloud error tree. botocore errors are translated into it in one place
(``cloud.ec2.translate_error``); nothing above the boundary sees botocore.

    CloudError
    ├── RetryableCloudError        try again later (with backoff)
    │   ├── Throttled              RequestLimitExceeded, Throttling
    │   └── CloudUnavailable       5xx, timeouts, connection failures
    └── PermanentCloudError        retrying the same call will not help
        ├── LimitReached
        │   ├── IpLimitReached     PrivateIpAddressLimitExceeded
        │   └── EniLimitReached    AttachmentLimitExceeded
        ├── SubnetExhausted        InsufficientFreeAddressesInSubnet
        │   └── SubnetFragmented   InsufficientCidrBlocks (no free aligned /28 prefix)
        ├── NotFound               InvalidNetworkInterfaceID.NotFound and kin
        ├── InUse                  InvalidNetworkInterface.InUse
        ├── PermissionDenied       UnauthorizedOperation, AuthFailure
        └── InvalidRequest         any other client error

Each class carries the CNI error code a pod's ADD gets when the pool fails this way
(``cni_code``: plain numbers, since ``cloud`` imports nothing of ``cni``; the agent's error
table, ``ipam_daemon.errors``, says what each code means, and a test keeps the two equal).
"""
from __future__ import annotations


class CloudError(Exception):
    """A failed cloud call. ``code`` is EC2's error code, ``action`` the API action."""

    retryable = False
    cni_code = 107  # agent internal error: nothing a pod's retry would change

    def __init__(self, message: str, *, code: str = "", action: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.action = action


class RetryableCloudError(CloudError):
    retryable = True
    cni_code = 11  # try again later


class Throttled(RetryableCloudError):
    cni_code = 102  # cloud API throttled


class CloudUnavailable(RetryableCloudError):
    cni_code = 11  # try again later


class PermanentCloudError(CloudError):
    pass


class LimitReached(PermanentCloudError):
    pass


class IpLimitReached(LimitReached):
    cni_code = 103  # no free address


class EniLimitReached(LimitReached):
    cni_code = 101  # ENI limit reached


class SubnetExhausted(PermanentCloudError):
    cni_code = 100  # subnet exhausted


class SubnetFragmented(SubnetExhausted):
    """Prefix delegation: the subnet still has free addresses, but no free aligned /28."""

    cni_code = 108  # subnet fragmented


class NotFound(PermanentCloudError):
    pass


class InUse(PermanentCloudError):
    pass


class PermissionDenied(PermanentCloudError):
    cni_code = 104  # cloud permission denied


class InvalidRequest(PermanentCloudError):
    pass
