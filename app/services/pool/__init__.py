"""The server pool; each function lives in the module named by its concern.

``admission`` (SSH login, host key, preflight), ``specs`` (inputs, reports, errors), ``networks``
(allowed addresses), ``credentials`` (sealed logins -> SSH targets), ``queries`` (reading),
``operator`` (drain/undrain, update, remove/retire), ``allocation`` (the allocation rule,
release, waking waiting boxes), ``probes`` (health records), ``cleaning`` (between owners).

State model (``servers.state``)::

    available --allocate--> allocated --release--> available | cleaning
    cleaning  --release--> available
    any       --quarantine / K failed probes--> unhealthy --probe ok / operator--> available
    operator: available | allocated | unhealthy | cleaning --> draining --> available
              anything without a live box --> retired

No Flask here and no commits: the caller (request, task or CLI command) owns the
transaction; functions flush when they need ids or constraint checks.
"""

from app.services.pool.admission import (
    UNIQUE_CONSTRAINT,
    add_server,
    admit_server,
    check_connection,
    repin_server,
)
from app.services.pool.allocation import (
    allocate_server,
    capacity_shortfall,
    release_server,
    wake_waiting_boxes,
)
from app.services.pool.cleaning import (
    cleanliness_problem,
    finish_cleaning,
    record_cleaning_failure,
    scrub,
    servers_in_cleaning,
)
from app.services.pool.credentials import credential_aad, gateway_target_for, ssh_target_for
from app.services.pool.networks import (
    IPAddress,
    IPNetwork,
    Resolver,
    check_host_allowed,
    resolve_addresses,
)
from app.services.pool.operator import OPERATOR_STATES, drain_server, remove_server, update_server
from app.services.pool.probes import quarantine_server, record_server_probe
from app.services.pool.queries import (
    LIVE_BOX,
    ServerView,
    get_server,
    list_servers,
    live_box_ids,
    page_servers,
    view_server,
    view_servers,
)
from app.services.pool.specs import (
    FINGERPRINT_RE,
    PRIVATE_KEY_RE,
    SKIPPED_CHECKS,
    Admission,
    ConnectCheck,
    ConnectionReport,
    EnvironmentChecks,
    GatewaySpec,
    HostNotAllowedError,
    Resources,
    ServerSpec,
    ServerUnreachableError,
    SSHLoginFailedError,
    normalize_fingerprint,
)

__all__ = [
    "FINGERPRINT_RE",
    "LIVE_BOX",
    "OPERATOR_STATES",
    "PRIVATE_KEY_RE",
    "SKIPPED_CHECKS",
    "UNIQUE_CONSTRAINT",
    "Admission",
    "ConnectCheck",
    "ConnectionReport",
    "EnvironmentChecks",
    "GatewaySpec",
    "HostNotAllowedError",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "Resources",
    "SSHLoginFailedError",
    "ServerSpec",
    "ServerUnreachableError",
    "ServerView",
    "add_server",
    "admit_server",
    "allocate_server",
    "capacity_shortfall",
    "check_connection",
    "check_host_allowed",
    "cleanliness_problem",
    "credential_aad",
    "drain_server",
    "finish_cleaning",
    "gateway_target_for",
    "get_server",
    "list_servers",
    "live_box_ids",
    "normalize_fingerprint",
    "page_servers",
    "quarantine_server",
    "record_cleaning_failure",
    "record_server_probe",
    "release_server",
    "remove_server",
    "repin_server",
    "resolve_addresses",
    "scrub",
    "servers_in_cleaning",
    "ssh_target_for",
    "update_server",
    "view_server",
    "view_servers",
    "wake_waiting_boxes",
]
