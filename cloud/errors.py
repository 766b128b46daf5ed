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
        ├── NotFound               InvalidNetworkInterfaceID.NotFound and kin
        ├── InUse                  InvalidNetworkInterface.InUse
        ├── PermissionDenied       UnauthorizedOperation, AuthFailure
        └── InvalidRequest         any other client error
"""
from __future__ import annotations


class CloudError(Exception):
    """A failed cloud call. ``code`` is EC2's error code, ``action`` the API action."""

    retryable = False

    def __init__(self, message: str, *, code: str = "", action: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.action = action


class RetryableCloudError(CloudError):
    retryable = True


class Throttled(RetryableCloudError):
    pass


class CloudUnavailable(RetryableCloudError):
    pass


class PermanentCloudError(CloudError):
    pass


class LimitReached(PermanentCloudError):
    pass


class IpLimitReached(LimitReached):
    pass


class EniLimitReached(LimitReached):
    pass


class SubnetExhausted(PermanentCloudError):
    pass


class NotFound(PermanentCloudError):
    pass


class InUse(PermanentCloudError):
    pass


class PermissionDenied(PermanentCloudError):
    pass


class InvalidRequest(PermanentCloudError):
    pass
