"""The admin interface (SPEC 5.1): the Unix-socket JSON-lines server and the fs/set/get/list commands."""

from __future__ import annotations

from runtime.admin.actions import AdminActions, FeatureServers, RuntimeConfig
from runtime.admin.addresses import canonical_ip, is_valid_ip, is_valid_ipv4, is_valid_ipv6
from runtime.admin.commands import (
    add_commands,
    cmd_cli,
    cmd_fs,
    cmd_get,
    cmd_list,
    cmd_set,
    run_admin,
    socket_request,
)
from runtime.admin.server import AdminSocket, build

__all__ = [
    "AdminActions",
    "AdminSocket",
    "FeatureServers",
    "RuntimeConfig",
    "add_commands",
    "build",
    "canonical_ip",
    "cmd_cli",
    "cmd_fs",
    "cmd_get",
    "cmd_list",
    "cmd_set",
    "is_valid_ip",
    "is_valid_ipv4",
    "is_valid_ipv6",
    "run_admin",
    "socket_request",
]
