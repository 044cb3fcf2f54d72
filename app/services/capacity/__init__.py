"""Cloud capacity that follows demand; each function lives in the module named by its concern.

``demand`` (a server for a box no server fits), ``bring_up`` (create, first contact, bootstrap),
``warm_pool``, ``retire`` (idle and operator-retired servers, nodes destroyed), ``orphans``,
``budget`` (sizes, maximum, monthly budget), ``sweep`` (the beat), ``context`` (what a run
needs and reports), ``cloud_providers`` (the providers an operator configures).

Cloud server lifecycle (``servers.state``)::

    creating --node has an address--> bootstrapping --bootstrap verified--> available
    creating | bootstrapping --never reachable by CLOUD_BOOT_TIMEOUT_SECONDS--> destroyed
    available (idle past the provider's idle time, above its warm target) --> retiring --> destroyed

- **On demand** (:func:`request_capacity`, called by the engine when ``allocate_server``
  finds no fitting server): the first enabled provider for the box's region (a box without
  a region: any provider) that has a size for the plan, is under its maximum and its monthly
  budget, gets a new server row in ``creating`` - committed BEFORE any cloud API call - and
  the box waits with a ``creating_server`` event that shows the provider's expected boot
  time. Boxes that are already waiting share servers being created (one per waiting box)
  of their region that fit their plan; only waiting boxes that could take such a server
  count against it.
- **Creation is idempotent**: the node is named ``vibebox-<server id>`` and tagged
  ``vibebox`` + ``vibebox-server-<id>``; :func:`advance_server` looks the tag up before it
  creates. A crash (SIGKILL) between the create call and our commit leaves a ``creating``
  row and a node with its tag: the next run - or the orphan reconciliation - adopts it.
- **First contact is trust-on-first-use**: a node we created is reached at the address the
  provider's API reports; the host key it presents then is pinned, and every later
  connection is checked against it (README "Cloud capacity").
- **Beat** (:func:`sweep`): stuck creations resent; each provider's warm target kept
  (idle + being created servers of its warm size); idle servers above the warm target retired
  after ``idle_retire_seconds``; orphans (nodes with our tag and no live row) adopted
  (``creating`` rows), left alone when another provider's live row names them (providers
  sharing a cloud account list the same nodes), else destroyed or only reported
  (``CLOUD_ORPHAN_POLICY``), always logged and counted (``vibebox_cloud_orphans_total``).

Remote work (cloud API, SSH) runs with no transaction open; like the engine's runner,
:func:`advance_server` and :func:`destroy_server` commit between their phases.
"""

from app.services.capacity.bring_up import advance_server
from app.services.capacity.budget import (
    CREATE_FAILED,
    FAILURE_COOLDOWN,
    SizeChoice,
    limit_refusal,
    size_for_plan,
)
from app.services.capacity.context import (
    IN_FLIGHT,
    Bootstrap,
    CapacityContext,
    ComputeFor,
    Progress,
    SweepReport,
    bootstrap_cloud_server,
    default_compute_for,
)
from app.services.capacity.demand import new_cloud_server, request_capacity
from app.services.capacity.orphans import reconcile_orphans
from app.services.capacity.retire import destroy_server, retire_idle
from app.services.capacity.sweep import resend_stuck, sweep
from app.services.capacity.warm_pool import refill_warm_pool, warm_size_of

__all__ = [
    "CREATE_FAILED",
    "FAILURE_COOLDOWN",
    "IN_FLIGHT",
    "Bootstrap",
    "CapacityContext",
    "ComputeFor",
    "Progress",
    "SizeChoice",
    "SweepReport",
    "advance_server",
    "bootstrap_cloud_server",
    "default_compute_for",
    "destroy_server",
    "limit_refusal",
    "new_cloud_server",
    "reconcile_orphans",
    "refill_warm_pool",
    "request_capacity",
    "resend_stuck",
    "retire_idle",
    "size_for_plan",
    "sweep",
    "warm_size_of",
]
