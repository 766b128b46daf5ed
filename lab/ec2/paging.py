"""MaxResults and NextToken for the Describe calls, as the EC2 API reference gives them:
DescribeNetworkInterfaces and DescribeSubnets take MaxResults 5 to 1000,
DescribeInstanceTypes 5 to 100; DescribeNetworkInterfaces' MaxResults cannot be given with
its id list. A value out of range is
InvalidParameterValue, a token the layer did not hand out InvalidNextToken (errors-overview).

moto lists every ENI, subnet and instance type whatever MaxResults says, so the layer cuts
moto's whole answer into pages itself; the token is the index of the page's first item.
DescribeInstances moto pages itself (and refuses MaxResults with instance ids); its
reference gives no range for MaxResults, so none is checked.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Callable

from lab.ec2.wire import ApiRequest, Refusal, parse_answer, parse_count

logger = logging.getLogger(__name__)

Rewrite = Callable[[bytes], bytes]


def check_max_results(request: ApiRequest, allowed: range, ids_parameter: str | None) -> int | None:
    """MaxResults as an int (None when absent), or a refusal naming the rule broken."""
    if request.get("MaxResults") is None:
        return None
    size = parse_count(request, "MaxResults")
    if size not in allowed:
        raise Refusal("InvalidParameterValue",
                      f"Value ( {size} ) for parameter maxResults is invalid: it must be "
                      f"between {allowed.start} and {allowed.stop - 1}")
    if ids_parameter and request.has_prefix(ids_parameter):
        raise Refusal("InvalidParameterCombination",
                      f"The parameter {ids_parameter} cannot be used with the parameter "
                      "MaxResults")
    return size


def read_token(request: ApiRequest) -> int:
    token = request.get("NextToken")
    if token is None:
        return 0
    if not token.isdigit():
        raise Refusal("InvalidNextToken", f"The specified NextToken {token!r} is not valid")
    return int(token)


def page_rewrite(request: ApiRequest, list_tag: str, allowed: range,
                 ids_parameter: str | None) -> Rewrite | None:
    """A rewrite cutting moto's ``list_tag`` items to the page asked for, or None when the
    request asks for no paging."""
    size = check_max_results(request, allowed, ids_parameter)
    start = read_token(request)
    if size is None and request.get("NextToken") is None:
        return None
    size = size or allowed.stop - 1

    def page(body: bytes) -> bytes:
        root, tag = parse_answer(body)
        items = [(listed, item) for listed in root.findall(tag(list_tag))
                 for item in listed.findall(tag("item"))]
        return cut_to_page(root, tag, items, start, size, "InvalidNextToken",
                           f"The specified NextToken '{start}' is not valid or has expired")

    return page


def cut_to_page(root: ET.Element, tag: Callable[[str], str],
                items: list[tuple[ET.Element, ET.Element]], start: int, size: int,
                code: str, message: str) -> bytes:
    """The answer with only ``items[start:start + size]`` kept (each item with the list it
    sits in), and a nextToken (the next page's first index) when more follow; ``code`` and
    ``message`` refuse a start past the end."""
    if start > len(items):
        raise Refusal(code, message)
    for index, (listed, item) in enumerate(items):
        if not start <= index < start + size:
            listed.remove(item)
    for old in root.findall(tag("nextToken")):
        root.remove(old)
    if start + size < len(items):
        ET.SubElement(root, tag("nextToken")).text = str(start + size)
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def chain(*rewrites: Rewrite | None) -> Rewrite | None:
    """The rewrites applied in order, skipping the absent ones."""
    present = [r for r in rewrites if r is not None]
    if not present:
        return None

    def apply(body: bytes) -> bytes:
        for rewrite in present:
            body = rewrite(body)
        return body

    return apply
