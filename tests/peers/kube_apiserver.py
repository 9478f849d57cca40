"""Stand-in for the Kubernetes API server, for the end-to-end suite.

No real kube-apiserver can run on the test machine (no etcd, no container
runtime, no network), so the tracer's kube-rs client is tested against this
server instead. It speaks the real wire protocol over plain HTTP/1.1 on
127.0.0.1:--port, closely enough that kube-rs's `Api::get`, `get_metadata`,
`list` and `watcher`, and kubectl 1.32 (`get`, `get -w`, `get --raw`) work
against it unchanged:

  * discovery: /version, /api, /api/v1, /apis, /apis/{group}[/{version}]
    (legacy discovery; aggregated-discovery Accept types fall back to plain
    JSON as kubectl allows); /openapi/* answers 404;
  * core/v1 pods, services, namespaces, nodes, events; apps/v1 deployments,
    replicasets, statefulsets, daemonsets; batch/v1 jobs, cronjobs;
    discovery.k8s.io/v1 endpointslices: get, list and watch, with
    fieldSelector, labelSelector, limit/continue pagination,
    resourceVersion/resourceVersionMatch, timeoutSeconds,
    allowWatchBookmarks, sendInitialEvents (streaming lists);
  * content negotiation like the real server: plain JSON, Table
    (`as=Table;g=meta.k8s.io;v=v1|v1beta1`, what kubectl asks for) and
    PartialObjectMetadata[List] (what kube-rs's metadata calls ask for);
  * one global, monotonically increasing resourceVersion (like etcd's
    revision), a bounded event history, and 410 Expired for watches and
    continue tokens older than the history.

Only GET is served on the API paths (405 otherwise): the tests change the
cluster through the control API under /_control/ on the same port:

  POST   /_control/objects                       create or replace an object
  DELETE /_control/objects/{kind}/{ns|-}/{name}  delete (?grace_seconds=N: only
                                                 mark it terminating)
  POST   /_control/outage {"on":b,"mode":m}      m = "close" (default) | "503"
  POST   /_control/compact                       forget history, end watches
  POST   /_control/drop_watches                  end watches cleanly
  GET    /_control/requests, DELETE same         the API request log
  GET    /_control/watches                       open watch streams per resource
  GET    /_control/state                         resourceVersion, compactedRV, outage

Standard library only (Python 3.11). Prints "listening on 127.0.0.1:PORT" once
bound.
"""

import argparse
import base64
import calendar
import collections
import copy
import json
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.4",
    "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335",
    "gitTreeState": "clean",
    "buildDate": "2025-04-22T16:02:27Z",
    "goVersion": "go1.23.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

META_GROUP = "meta.k8s.io"
VERBS = ["get", "list", "watch"]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# How long a list or watch at a future resourceVersion waits for it, as the
# real server's watch cache does before answering "Too large resource version".
FRESHNESS_WAIT = 3.0
# How often an idle watch checks whether its client went away.
WATCH_POLL = 0.2


# ---------------------------------------------------------------- resources


class Resource:
    """One served resource type and what the real server knows about it."""

    def __init__(self, plural, kind, group, namespaced, short_names, fields, columns, cells):
        self.plural = plural
        self.kind = kind
        self.group = group
        self.version = "v1"
        self.namespaced = namespaced
        self.short_names = short_names
        # Field selectors the real server accepts beyond metadata.name/namespace.
        self.fields = fields
        self.columns = columns
        self.cells = cells

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self):
        """`pods`, `replicasets.apps`: how the real server names it in errors."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self):
        entry = {
            "name": self.plural,
            "singularName": self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": VERBS,
        }
        if self.short_names:
            entry["shortNames"] = self.short_names
        if self.plural not in ("namespaces", "nodes", "endpointslices", "events"):
            entry["categories"] = ["all"]
        return entry


def column(name, type_="string", priority=0, fmt="", description=""):
    return {
        "name": name,
        "type": type_,
        "format": fmt,
        "description": description or name,
        "priority": priority,
    }


NAME_COLUMN = column(
    "Name",
    fmt="name",
    description="Name must be unique within a namespace. Is required when creating resources.",
)
AGE_COLUMN = column(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def human_duration(seconds):
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, as kubectl shows ages."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m{s}s" if s else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h{m}m" if m else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d{h}h" if h else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        d = (hours // 24) % 365
        return f"{hours // 24 // 365}y{d}d" if d else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(obj):
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    try:
        created = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return human_duration(int(time.time() - created))


def or_none(value):
    return value if value not in (None, "", []) else "<none>"


def containers_cells(template_spec):
    containers = (template_spec or {}).get("containers") or []
    names = ",".join(c.get("name", "") for c in containers)
    images = ",".join(c.get("image", "") for c in containers)
    return [or_none(names), or_none(images)]


def selector_text(selector):
    labels = (selector or {}).get("matchLabels") or {}
    return or_none(",".join(f"{k}={v}" for k, v in sorted(labels.items())))


def pod_cells(pod):
    spec, status = pod.get("spec", {}), pod.get("status", {})
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for c in reversed(statuses):
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")]
    gates = spec.get("readinessGates") or []
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        age(pod),
        ips[0] if ips else or_none(status.get("podIP")),
        or_none(spec.get("nodeName")),
        or_none(status.get("nominatedNodeName")),
        "<none>" if not gates else f"0/{len(gates)}",
    ]


POD_COLUMNS = [
    NAME_COLUMN,
    column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
    column("Status", description="The aggregate status of the containers in this pod."),
    column("Restarts", description="The number of times the containers in this pod have been restarted."),
    AGE_COLUMN,
    column("IP", priority=1, description="podIP address allocated to the pod."),
    column("Node", priority=1, description="NodeName indicates in which node this pod is scheduled."),
    column("Nominated Node", priority=1, description="nominatedNodeName is set when this pod preempts."),
    column("Readiness Gates", priority=1, description="If specified, all readiness gates will be evaluated."),
]


def service_cells(svc):
    spec = svc.get("spec", {})
    ports = ",".join(
        (f"{p['port']}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}")
        + f"/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    ingress = (svc.get("status", {}).get("loadBalancer") or {}).get("ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)
    if not external:
        external = ",".join(spec.get("externalIPs") or [])
    if not external and spec.get("type") == "LoadBalancer":
        external = "<pending>"
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        svc["metadata"]["name"],
        spec.get("type", "ClusterIP"),
        or_none(spec.get("clusterIP")),
        or_none(external),
        or_none(ports),
        age(svc),
        or_none(selector),
    ]


SERVICE_COLUMNS = [
    NAME_COLUMN,
    column("Type"),
    column("Cluster-IP"),
    column("External-IP"),
    column("Port(s)"),
    AGE_COLUMN,
    column("Selector", priority=1),
]


def namespace_cells(ns):
    return [ns["metadata"]["name"], ns.get("status", {}).get("phase", "Active"), age(ns)]


def node_cells(node):
    status = node.get("status", {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = "Ready" if conditions.get("Ready") == "True" else "NotReady"
    labels = node.get("metadata", {}).get("labels") or {}
    roles = ",".join(
        sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    )
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        node["metadata"]["name"],
        ready,
        or_none(roles),
        age(node),
        info.get("kubeletVersion", ""),
        or_none(addresses.get("InternalIP")),
        or_none(addresses.get("ExternalIP")),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


NODE_COLUMNS = [
    NAME_COLUMN,
    column("Status"),
    column("Roles"),
    AGE_COLUMN,
    column("Version"),
    column("Internal-IP", priority=1),
    column("External-IP", priority=1),
    column("OS-Image", priority=1),
    column("Kernel-Version", priority=1),
    column("Container-Runtime", priority=1),
]


def replicaset_cells(rs):
    spec, status = rs.get("spec", {}), rs.get("status", {})
    return [
        rs["metadata"]["name"],
        spec.get("replicas", 1),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        age(rs),
        *containers_cells(spec.get("template", {}).get("spec")),
        selector_text(spec.get("selector")),
    ]


WORKLOAD_TAIL = [
    column("Containers", priority=1),
    column("Images", priority=1),
    column("Selector", priority=1),
]

REPLICASET_COLUMNS = [
    NAME_COLUMN,
    column("Desired", "integer"),
    column("Current", "integer"),
    column("Ready", "integer"),
    AGE_COLUMN,
    *WORKLOAD_TAIL,
]


def deployment_cells(d):
    spec, status = d.get("spec", {}), d.get("status", {})
    return [
        d["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        age(d),
        *containers_cells(spec.get("template", {}).get("spec")),
        selector_text(spec.get("selector")),
    ]


DEPLOYMENT_COLUMNS = [
    NAME_COLUMN,
    column("Ready"),
    column("Up-to-date", "integer"),
    column("Available", "integer"),
    AGE_COLUMN,
    *WORKLOAD_TAIL,
]


def statefulset_cells(s):
    spec, status = s.get("spec", {}), s.get("status", {})
    return [
        s["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        age(s),
        *containers_cells(spec.get("template", {}).get("spec")),
    ]


STATEFULSET_COLUMNS = [
    NAME_COLUMN,
    column("Ready"),
    AGE_COLUMN,
    column("Containers", priority=1),
    column("Images", priority=1),
]


def daemonset_cells(ds):
    spec, status = ds.get("spec", {}), ds.get("status", {})
    node_selector = (spec.get("template", {}).get("spec") or {}).get("nodeSelector") or {}
    return [
        ds["metadata"]["name"],
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        or_none(",".join(f"{k}={v}" for k, v in sorted(node_selector.items()))),
        age(ds),
        *containers_cells(spec.get("template", {}).get("spec")),
        selector_text(spec.get("selector")),
    ]


DAEMONSET_COLUMNS = [
    NAME_COLUMN,
    column("Desired", "integer"),
    column("Current", "integer"),
    column("Ready", "integer"),
    column("Up-to-date", "integer"),
    column("Available", "integer"),
    column("Node Selector"),
    AGE_COLUMN,
    *WORKLOAD_TAIL,
]


def job_cells(job):
    spec, status = job.get("spec", {}), job.get("status", {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = (
        "Complete"
        if conditions.get("Complete") == "True"
        else "Failed" if conditions.get("Failed") == "True" else "Running"
    )
    return [
        job["metadata"]["name"],
        state,
        f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}",
        "",
        age(job),
        *containers_cells(spec.get("template", {}).get("spec")),
        selector_text(spec.get("selector")),
    ]


JOB_COLUMNS = [
    NAME_COLUMN,
    column("Status"),
    column("Completions"),
    column("Duration"),
    AGE_COLUMN,
    *WORKLOAD_TAIL,
]


def cronjob_cells(cj):
    spec, status = cj.get("spec", {}), cj.get("status", {})
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return [
        cj["metadata"]["name"],
        spec.get("schedule", ""),
        or_none(spec.get("timeZone")),
        "True" if spec.get("suspend") else "False",
        len(status.get("active") or []),
        "<none>",
        age(cj),
        *containers_cells(job_spec.get("template", {}).get("spec")),
        selector_text(job_spec.get("selector")),
    ]


CRONJOB_COLUMNS = [
    NAME_COLUMN,
    column("Schedule"),
    column("Timezone"),
    column("Suspend", "boolean"),
    column("Active", "integer"),
    column("Last Schedule"),
    AGE_COLUMN,
    *WORKLOAD_TAIL,
]


def endpointslice_cells(es):
    ports = ",".join(str(p.get("port", "")) for p in es.get("ports") or []) or "<unset>"
    addresses = [a for e in es.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3])
    if len(addresses) > 3:
        shown += f" + {len(addresses) - 3} more..."
    return [es["metadata"]["name"], es.get("addressType", ""), ports, or_none(shown), age(es)]


ENDPOINTSLICE_COLUMNS = [
    NAME_COLUMN,
    column("AddressType"),
    column("Ports"),
    column("Endpoints"),
    AGE_COLUMN,
]

def event_cells(ev):
    involved = ev.get("involvedObject") or {}
    last = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("metadata", {}).get("creationTimestamp")
    return [
        age({"metadata": {"creationTimestamp": last}}) if last else "<unknown>",
        ev.get("type", ""),
        ev.get("reason", ""),
        f"{involved.get('kind', '').lower()}/{involved.get('name', '')}",
        ev.get("message", ""),
    ]


EVENT_COLUMNS = [
    column("Last Seen"),
    column("Type"),
    column("Reason"),
    column("Object"),
    column("Message"),
]


def dotted(path):
    """A field-selector getter for a plain dotted path (events' fields)."""

    def get(obj):
        for part in path.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        return "" if obj is None else str(obj)

    return get


EVENT_FIELDS = {
    f: dotted(f)
    for f in (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    )
}

POD_FIELDS = {
    "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
    "spec.restartPolicy": lambda o: o.get("spec", {}).get("restartPolicy", ""),
    "spec.schedulerName": lambda o: o.get("spec", {}).get("schedulerName", ""),
    "spec.serviceAccountName": lambda o: o.get("spec", {}).get("serviceAccountName", ""),
    "spec.hostNetwork": lambda o: "true" if o.get("spec", {}).get("hostNetwork") else "false",
    "status.phase": lambda o: o.get("status", {}).get("phase", ""),
    "status.podIP": lambda o: o.get("status", {}).get("podIP", ""),
    "status.podIPs": lambda o: ",".join(p.get("ip", "") for p in o.get("status", {}).get("podIPs") or []),
    "status.nominatedNodeName": lambda o: o.get("status", {}).get("nominatedNodeName", ""),
}

RESOURCES = [
    Resource("pods", "Pod", "", True, ["po"], POD_FIELDS, POD_COLUMNS, pod_cells),
    Resource("services", "Service", "", True, ["svc"], {}, SERVICE_COLUMNS, service_cells),
    # Only so that `kubectl describe` finds none rather than a 404.
    Resource("events", "Event", "", True, ["ev"], EVENT_FIELDS, EVENT_COLUMNS, event_cells),
    Resource(
        "namespaces",
        "Namespace",
        "",
        False,
        ["ns"],
        {"status.phase": lambda o: o.get("status", {}).get("phase", "")},
        [NAME_COLUMN, column("Status"), AGE_COLUMN],
        namespace_cells,
    ),
    Resource(
        "nodes",
        "Node",
        "",
        False,
        ["no"],
        {"spec.unschedulable": lambda o: "true" if o.get("spec", {}).get("unschedulable") else "false"},
        NODE_COLUMNS,
        node_cells,
    ),
    Resource("deployments", "Deployment", "apps", True, ["deploy"], {}, DEPLOYMENT_COLUMNS, deployment_cells),
    Resource(
        "replicasets",
        "ReplicaSet",
        "apps",
        True,
        ["rs"],
        {"status.replicas": lambda o: str(o.get("status", {}).get("replicas", 0))},
        REPLICASET_COLUMNS,
        replicaset_cells,
    ),
    Resource("statefulsets", "StatefulSet", "apps", True, ["sts"], {}, STATEFULSET_COLUMNS, statefulset_cells),
    Resource("daemonsets", "DaemonSet", "apps", True, ["ds"], {}, DAEMONSET_COLUMNS, daemonset_cells),
    Resource(
        "jobs",
        "Job",
        "batch",
        True,
        [],
        {"status.successful": lambda o: str(o.get("status", {}).get("succeeded", 0))},
        JOB_COLUMNS,
        job_cells,
    ),
    Resource("cronjobs", "CronJob", "batch", True, ["cj"], {}, CRONJOB_COLUMNS, cronjob_cells),
    Resource(
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io",
        True,
        [],
        {},
        ENDPOINTSLICE_COLUMNS,
        endpointslice_cells,
    ),
]

BY_PLURAL = {r.plural: r for r in RESOURCES}
GROUPS = ["apps", "batch", "discovery.k8s.io"]


def resource_for_kind(name):
    """The resource a control-API kind names: `Pod`, `pod` or `pods`."""
    lowered = name.lower()
    for r in RESOURCES:
        if lowered in (r.kind.lower(), r.plural):
            return r
    return None


def find_resource(group, plural):
    r = BY_PLURAL.get(plural)
    return r if r is not None and r.group == group else None


# ------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error the real server answers with a `Status` body."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def not_found(resource, name):
    details = {"name": name, "kind": resource.plural}
    if resource.group:
        details = {"name": name, "group": resource.group, "kind": resource.plural}
    return ApiError(404, "NotFound", f'{resource.qualified} "{name}" not found', details)


def path_not_found():
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def bad_request(message):
    return ApiError(400, "BadRequest", message)


def expired(message):
    return ApiError(410, "Expired", message)


def too_large_rv(wanted, current):
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {wanted}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def not_acceptable(message=None):
    return ApiError(
        406,
        "NotAcceptable",
        message
        # The real server also serves YAML and protobuf; this one only JSON.
        or "only the following media types are accepted: application/json",
    )


# ---------------------------------------------------------------- selectors

FIELD_TERM = re.compile(r"^\s*([^!=\s]+)\s*(==|!=|=)\s*(.*?)\s*$")
LABEL_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")
LABEL_KEY = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def parse_field_selector(text, resource):
    """[(field, op, value)] or ApiError, with the real server's field checks."""
    terms = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = FIELD_TERM.match(part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.groups()
        if field not in ("metadata.name", "metadata.namespace") and field not in resource.fields:
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, "!=" if op == "!=" else "=", value))
    return terms


def field_value(obj, field, resource):
    meta = obj.get("metadata", {})
    if field == "metadata.name":
        return meta.get("name", "")
    if field == "metadata.namespace":
        return meta.get("namespace", "")
    return resource.fields[field](obj)


def split_top_level(text):
    """Splits on commas outside parentheses (`a in (x,y),b` is two terms)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text):
    """[(key, op, values)] with op in =, !=, in, notin, exists, !exists."""
    terms = []
    for part in split_top_level(text):
        part = part.strip()
        m = LABEL_SET.match(part)
        if m:
            key, op, values = m.groups()
            terms.append((key, op, {v.strip() for v in values.split(",") if v.strip()}))
        elif part.startswith("!"):
            terms.append((part[1:].strip(), "!exists", None))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            terms.append((key.strip(), "!=", {value.strip()}))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            terms.append((key.strip(), "=", {value.strip()}))
        else:
            terms.append((part, "exists", None))
    for key, _, _ in terms:
        if not LABEL_KEY.match(key):
            raise bad_request(f"unable to parse requirement: invalid label key {key!r}")
    return terms


def labels_match(obj, terms):
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, values in terms:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
    return True


class Filter:
    """What a list or watch request selects: namespace, fields, labels."""

    def __init__(self, resource, namespace, query):
        self.resource = resource
        self.namespace = namespace
        self.fields = parse_field_selector(query.get("fieldSelector", ""), resource)
        self.labels = parse_label_selector(query.get("labelSelector", ""))

    def matches(self, obj):
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        for field, op, value in self.fields:
            equal = field_value(obj, field, self.resource) == value
            if equal != (op == "="):
                return False
        return labels_match(obj, self.labels)


# -------------------------------------------------------------- negotiation


def parse_accept(header):
    """[(type, params)] in preference order (q-values honoured, stable)."""
    entries = []
    for index, item in enumerate((header or "").split(",")):
        pieces = [p.strip() for p in item.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for p in pieces[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        entries.append((-q, index, pieces[0].lower(), params))
    entries.sort()
    return [(media, params) for _, _, media, params in entries]


def negotiate(header, allowed):
    """The first Accept entry this server can produce: (as, meta_version).

    `as` is None for the plain object, or one of `allowed` (Table,
    PartialObjectMetadata, PartialObjectMetadataList). Like the real
    server, a conversion it knows but that does not fit the request (a
    PartialObjectMetadataList for a single object) is an error rather than a
    reason to try the next entry; one it does not know is skipped.
    """
    if not header:
        return None, None
    for media, params in parse_accept(header):
        if media not in ("application/json", "application/*", "*/*"):
            continue
        target = params.get("as")
        if target is None:
            if "g" in params or "v" in params:
                continue
            return None, None
        if params.get("g") != META_GROUP or params.get("v") not in ("v1", "v1beta1"):
            continue
        if target not in ("Table", "PartialObjectMetadata", "PartialObjectMetadataList"):
            continue
        if target not in allowed:
            if target == "PartialObjectMetadata":
                raise not_acceptable(
                    "you requested PartialObjectMetadata, but the requested object is a list"
                )
            if target == "PartialObjectMetadataList":
                raise not_acceptable(
                    "you requested PartialObjectMetadataList, but the requested object is not a list"
                )
            continue
        return target, params["v"]
    raise not_acceptable()


# -------------------------------------------------------------------- store


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def storage_key(key):
    """`ns/name` (`/name` if cluster-scoped): lists are in this key's byte
    order, like etcd's `/registry/<resource>/<ns>/<name>` keys."""
    return f"{key[0]}/{key[1]}"


def strip_type(obj):
    """A list item: the real server's typed lists carry no kind/apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def partial_metadata(obj, meta_version):
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"{META_GROUP}/{meta_version}",
        "metadata": obj.get("metadata", {}),
    }


Event = collections.namedtuple("Event", "rv type plural key obj prev")


class Watch:
    """One open watch stream, fed by the store under its lock."""

    def __init__(self, resource, flt, conn):
        self.resource = resource
        self.filter = flt
        self.conn = conn
        self.queue = collections.deque()
        self.cut = None  # None, "clean" (end the stream) or "abort" (drop the socket)


class Store:
    """All objects, the global resourceVersion and the event history."""

    def __init__(self, history_limit):
        self.cond = threading.Condition()
        self.rv = 0
        # Every event after compacted_rv is in history; a watch may resume
        # from any resourceVersion >= compacted_rv.
        self.compacted_rv = 0
        self.history = collections.deque()
        self.history_limit = history_limit
        self.objects = {r.plural: {} for r in RESOURCES}
        self.watches = set()
        self.outage = None
        self.requests = []
        with self.cond:
            for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
                self._put(BY_PLURAL["namespaces"], {"kind": "Namespace", "metadata": {"name": name}})

    # -- changes (callers hold self.cond)

    def _record(self, event):
        self.history.append(event)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for w in self.watches:
            if w.resource.plural == event.plural:
                w.queue.append(event)
        self.cond.notify_all()

    def _put(self, resource, body):
        meta = dict(body.get("metadata") or {})
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        if resource.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
            self._ensure_namespace(meta["namespace"])
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace") or "", meta["name"])
        prev = self.objects[resource.plural].get(key)
        if prev is not None:
            meta.setdefault("uid", prev["metadata"].get("uid"))
            meta.setdefault("creationTimestamp", prev["metadata"].get("creationTimestamp"))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta}
        for k, v in body.items():
            if k not in ("kind", "apiVersion", "metadata"):
                obj[k] = copy.deepcopy(v)
        if resource.plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        self.objects[resource.plural][key] = obj
        self._record(Event(self.rv, "MODIFIED" if prev else "ADDED", resource.plural, key, obj, prev))
        return obj

    def _ensure_namespace(self, name):
        # The real server refuses objects in a missing namespace; the tests
        # would only have to create it first, so it is created for them.
        if ("", name) not in self.objects["namespaces"]:
            self._put(BY_PLURAL["namespaces"], {"kind": "Namespace", "metadata": {"name": name}})

    def apply(self, body):
        kind = body.get("kind")
        resource = resource_for_kind(kind or "")
        if resource is None:
            raise ValueError(f"unknown kind {kind!r}")
        if body.get("apiVersion") not in (None, resource.api_version):
            raise ValueError(f"{kind} is served as {resource.api_version}, not {body['apiVersion']}")
        with self.cond:
            return self._put(resource, body)

    def delete(self, kind, namespace, name, grace_seconds=0):
        resource = resource_for_kind(kind)
        if resource is None:
            raise ValueError(f"unknown kind {kind!r}")
        key = (namespace if resource.namespaced else "", name)
        with self.cond:
            prev = self.objects[resource.plural].get(key)
            if prev is None:
                return None
            self.rv += 1
            obj = copy.deepcopy(prev)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if grace_seconds > 0:
                # Graceful deletion: the object stays, marked, until deleted for good.
                obj["metadata"].setdefault("deletionTimestamp", now_rfc3339())
                obj["metadata"].setdefault("deletionGracePeriodSeconds", grace_seconds)
                self.objects[resource.plural][key] = obj
                self._record(Event(self.rv, "MODIFIED", resource.plural, key, obj, prev))
            else:
                del self.objects[resource.plural][key]
                self._record(Event(self.rv, "DELETED", resource.plural, key, obj, prev))
            return obj

    def compact(self):
        with self.cond:
            # Like a write to some other resource (leases bump the revision all
            # the time): even a client that is up to date now resumes from an
            # older resourceVersion than the history keeps.
            self.rv += 1
            self.history.clear()
            self.compacted_rv = self.rv
            self._cut_watches("clean")
            return self.rv

    def set_outage(self, mode):
        with self.cond:
            self.outage = mode
            if mode:
                self._cut_watches("abort")

    def drop_watches(self):
        with self.cond:
            return self._cut_watches("clean")

    def _cut_watches(self, how):
        for w in self.watches:
            w.cut = how
            if how == "abort":
                # Now, even mid-write: an outage does not wait for the handler.
                try:
                    w.conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cond.notify_all()
        return len(self.watches)

    # -- reads (callers hold self.cond)

    def objects_at(self, plural, rv):
        """The objects as they were at resourceVersion rv, or None if compacted."""
        objs = dict(self.objects[plural])
        if rv >= self.rv:
            return objs
        if rv < self.compacted_rv:
            return None
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.plural != plural:
                continue
            if ev.prev is None:
                objs.pop(ev.key, None)
            else:
                objs[ev.key] = ev.prev
        return objs

    def wait_for_rv(self, rv):
        """Waits (holding the lock) until the store reaches rv, like the watch cache."""
        deadline = time.monotonic() + FRESHNESS_WAIT
        while self.rv < rv:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_large_rv(rv, self.rv)
            self.cond.wait(left)


# ------------------------------------------------------------------ routing


def parse_rv(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise bad_request(f'resourceVersion: Invalid value: "{text}": must be a non-negative integer')
    return value


def encode_continue(rv, start):
    raw = json.dumps({"v": f"{META_GROUP}/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token):
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("v") != f"{META_GROUP}/v1":
            raise ValueError("version")
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )


def route(path):
    """(kind, details) for an API path: discovery or a resource request."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if parts == ["version"]:
        return "version", None
    if parts == ["api"]:
        return "api", None
    if parts == ["apis"]:
        return "apis", None
    if parts in (["healthz"], ["livez"], ["readyz"]):
        return "health", None
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 2:
        if parts[1] not in GROUPS:
            return None, None
        if len(parts) == 2:
            return "group", parts[1]
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None, None
    if version != "v1":
        return None, None
    if not rest:
        return "resources", group
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = find_resource(group, rest[0])
    if resource is None or len(rest) > 2:
        return None, None
    if namespace is not None and not resource.namespaced:
        return None, None
    name = rest[1] if len(rest) == 2 else None
    if name is not None and resource.namespaced and namespace is None:
        return None, None
    return "resource", (resource, namespace, name)


def group_entry(group):
    gv = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    store = None
    bookmark_seconds = 5.0
    watch_timeout = 300

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the request log (/_control/requests) is the record

    # -- plumbing

    def send_response(self, code, message=None):
        # The real server sends no Server header; keep Date.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _common_headers(self):
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")

    def _send_json(self, code, body):
        data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        # Logged before the first byte goes out: a client that has read the
        # response and asks for the log at once must find it answered.
        self._logged_status(code)
        self.send_response(code)
        self._common_headers()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_text(self, code, text):
        data = text.encode()
        self._logged_status(code)
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _logged_status(self, code):
        entry = getattr(self, "log_entry", None)
        if entry is not None:
            entry["status"] = code

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop_connection(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _control(self, url):
        code, body = control(self, url)
        _control_reply(self, code, body)

    # -- entry points

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self):
        url = urlsplit(self.path)
        self.log_entry = None
        if url.path.startswith("/_control/"):
            self._control(url)
            return
        self.log_entry = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "accept": self.headers.get("Accept", ""),
            "user_agent": self.headers.get("User-Agent", ""),
            "status": 0,
        }
        store = self.store
        with store.cond:
            store.requests.append(self.log_entry)
            outage = store.outage
        if outage == "503":
            self._read_body()
            unavailable = ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            self._send_json(503, unavailable.status())
            return
        if outage:
            self._drop_connection()
            return
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._read_body()
            self._api(url.path, query)
        except ApiError as e:
            self._send_json(e.code, e.status())

    def _api(self, path, query):
        kind, details = route(path)
        if kind == "health":
            self._send_text(200, "ok")
            return
        if kind is None:
            raise path_not_found()
        if self.command != "GET":
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
            )
        if kind != "resource":
            negotiate(self.headers.get("Accept"), ())
            self._send_json(200, self._discovery(kind, details))
            return
        resource, namespace, name = details
        if name is not None:
            self._get(resource, namespace, name, query)
        elif query.get("watch", "").lower() in ("true", "1", "t"):
            self._watch(resource, namespace, query)
        else:
            self._list(resource, namespace, query)

    def _discovery(self, kind, details):
        if kind == "version":
            return KUBE_VERSION
        if kind == "api":
            host = f"127.0.0.1:{self.server.server_address[1]}"
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        if kind == "apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_entry(g) for g in GROUPS]}
        if kind == "group":
            return {"kind": "APIGroup", "apiVersion": "v1", **group_entry(details)}
        group = details
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/v1" if group else "v1",
            "resources": [r.discovery() for r in RESOURCES if r.group == group],
        }

    # -- get and list

    def _table(self, resource, objs, meta_version, list_meta, query, headers=True):
        include = query.get("includeObject", "Metadata")
        rows = []
        for obj in objs:
            row = {"cells": resource.cells(obj)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = partial_metadata(obj, meta_version)
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": f"{META_GROUP}/{meta_version}",
            "metadata": list_meta,
            "columnDefinitions": resource.columns if headers else None,
            "rows": rows,
        }

    def _get(self, resource, namespace, name, query):
        as_, meta_version = negotiate(self.headers.get("Accept"), ("Table", "PartialObjectMetadata"))
        with self.store.cond:
            obj = self.store.objects[resource.plural].get((namespace or "", name))
        if obj is None:
            raise not_found(resource, name)
        if as_ == "PartialObjectMetadata":
            obj = partial_metadata(obj, meta_version)
        elif as_ == "Table":
            rv = obj["metadata"]["resourceVersion"]
            obj = self._table(resource, [obj], meta_version, {"resourceVersion": rv}, query)
        self._send_json(200, obj)

    def _list(self, resource, namespace, query):
        as_, meta_version = negotiate(self.headers.get("Accept"), ("Table", "PartialObjectMetadataList"))
        flt = Filter(resource, namespace, query)
        limit = int(query["limit"]) if query.get("limit", "").isdigit() else 0
        token = query.get("continue", "")
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if match and match not in ("Exact", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        if match and not rv_text:
            raise bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        if token and match:
            raise bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for continue")
        if token and rv_text not in ("", "0"):
            raise bad_request(
                "resourceVersion: Forbidden: specifying resource version is not allowed when using continue"
            )
        store = self.store
        with store.cond:
            start = ""
            if token:
                list_rv, start = decode_continue(token)
                objs = store.objects_at(resource.plural, list_rv)
                if objs is None:
                    raise expired(
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter, or use the continue value "
                        "from the response to retrieve the remainder of the results."
                    )
            elif rv_text in ("", "0"):
                list_rv, objs = store.rv, dict(store.objects[resource.plural])
            else:
                wanted = parse_rv(rv_text)
                store.wait_for_rv(wanted)
                # With a limit and no match the legacy semantics are "Exact".
                if match == "Exact" or (not match and limit):
                    list_rv, objs = wanted, store.objects_at(resource.plural, wanted)
                    if objs is None:
                        raise expired("The resourceVersion for the provided list is too old.")
                else:
                    list_rv, objs = store.rv, dict(store.objects[resource.plural])
        keys = sorted(
            (k for k, o in objs.items() if flt.matches(o) and storage_key(k) + "\x00" > start), key=storage_key
        )
        page, rest = (keys[:limit], keys[limit:]) if limit else (keys, [])
        list_meta = {"resourceVersion": str(list_rv)}
        if rest:
            list_meta["continue"] = encode_continue(list_rv, storage_key(page[-1]) + "\x00")
            list_meta["remainingItemCount"] = len(rest)
        items = [objs[k] for k in page]
        if as_ == "Table":
            body = self._table(resource, items, meta_version, list_meta, query)
        elif as_ == "PartialObjectMetadataList":
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"{META_GROUP}/{meta_version}",
                "metadata": list_meta,
                "items": [partial_metadata(o, meta_version) for o in items],
            }
        else:
            body = {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": list_meta,
                "items": [strip_type(o) for o in items],
            }
        self._send_json(200, body)

    # -- watch

    def _watch(self, resource, namespace, query):
        as_, meta_version = negotiate(self.headers.get("Accept"), ("Table", "PartialObjectMetadata"))
        flt = Filter(resource, namespace, query)
        try:
            timeout = int(query.get("timeoutSeconds") or self.watch_timeout)
        except ValueError:
            raise bad_request("timeoutSeconds: Invalid value: must be an integer")
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1", "t")
        initial_events = query.get("sendInitialEvents", "").lower() in ("true", "1", "t")
        rv_text = query.get("resourceVersion", "")
        if initial_events and (query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
            raise ApiError(
                422,
                "Invalid",
                "sendInitialEvents: Forbidden: sendInitialEvents requires setting resourceVersionMatch "
                "to NotOlderThan and allowWatchBookmarks to true",
            )
        store = self.store
        watch = Watch(resource, flt, self.connection)
        error = None
        with store.cond:
            if rv_text in ("", "0") or initial_events:
                if rv_text not in ("", "0"):
                    store.wait_for_rv(parse_rv(rv_text))
                # "Start at most recent" with the current state as ADDED events.
                start = [
                    Event(int(o["metadata"]["resourceVersion"]), "ADDED", resource.plural, k, o, None)
                    for k, o in sorted(store.objects[resource.plural].items(), key=lambda i: storage_key(i[0]))
                ]
            else:
                since = parse_rv(rv_text)
                store.wait_for_rv(since)
                if since < store.compacted_rv:
                    error = expired(f"too old resource version: {since} ({store.compacted_rv})")
                    start = []
                else:
                    start = [e for e in store.history if e.rv > since and e.plural == resource.plural]
            synced_rv = store.rv
            if error is None:
                store.watches.add(watch)
        self.send_response(200)
        self._common_headers()
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._logged_status(200)
        stream = WatchWriter(self, resource, as_, meta_version, query)
        try:
            if error is not None:
                stream.event("ERROR", error.status())
                stream.end()
                return
            for ev in start:
                stream.change(ev, flt)
            if initial_events:
                stream.bookmark(synced_rv, initial_end=True)
            self._stream(watch, stream, timeout, bookmarks, synced_rv)
        except OSError:
            self.close_connection = True
        finally:
            with store.cond:
                store.watches.discard(watch)

    def _stream(self, watch, stream, timeout, bookmarks, synced_rv):
        store = self.store
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_seconds
        while True:
            with store.cond:
                if not watch.queue and watch.cut is None:
                    wake = min(deadline, next_bookmark if bookmarks else deadline)
                    store.cond.wait(max(0.0, min(wake - time.monotonic(), WATCH_POLL)))
                events = list(watch.queue)
                watch.queue.clear()
                cut = watch.cut
                # Every event up to here has been queued for this watch.
                synced_rv = store.rv
            for ev in events:
                stream.change(ev, watch.filter)
            if cut == "abort":
                self._drop_connection()
                return
            now = time.monotonic()
            if cut == "clean" or now >= deadline:
                stream.end()
                return
            if bookmarks and now >= next_bookmark:
                stream.bookmark(synced_rv)
                next_bookmark = now + self.bookmark_seconds
            if not events and client_gone(self.connection):
                self.close_connection = True
                return


def client_gone(conn):
    """True once the peer closed its end (an idle watch notices no other way)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class WatchWriter:
    """Writes a watch's events as chunked, newline-terminated JSON."""

    def __init__(self, handler, resource, as_, meta_version, query):
        self.handler = handler
        self.resource = resource
        self.as_ = as_
        self.meta_version = meta_version
        self.query = query
        self.first_table = True

    def _chunk(self, data):
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self):
        """The terminating chunk: a clean end, as at timeoutSeconds."""
        self.handler.wfile.write(b"0\r\n\r\n")

    def event(self, type_, obj):
        line = json.dumps({"type": type_, "object": obj}, separators=(",", ":")) + "\n"
        self._chunk(line.encode())

    def change(self, ev, flt):
        """Sends ev as the real cacher would for this watch's selectors: an
        object that starts or stops matching is ADDED or DELETED."""
        now, before = flt.matches(ev.obj), flt.matches(ev.prev)
        if ev.type == "DELETED":
            if before:
                self.event("DELETED", self._convert(ev.obj))
            return
        if ev.type == "ADDED":
            type_ = "ADDED" if now else None
        elif now and before:
            type_ = "MODIFIED"
        elif now:
            type_ = "ADDED"
        elif before:
            type_ = "DELETED"
        else:
            type_ = None
        if type_:
            self.event(type_, self._convert(ev.obj))

    def bookmark(self, rv, initial_end=False):
        meta = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        if self.as_ == "PartialObjectMetadata":
            obj = partial_metadata({"metadata": meta}, self.meta_version)
        elif self.as_ == "Table":
            obj = {
                "kind": "Table",
                "apiVersion": f"{META_GROUP}/{self.meta_version}",
                "metadata": meta,
                "columnDefinitions": None,
                "rows": None,
            }
        else:
            obj = {"kind": self.resource.kind, "apiVersion": self.resource.api_version, "metadata": meta}
        self.event("BOOKMARK", obj)

    def _convert(self, obj):
        if self.as_ == "PartialObjectMetadata":
            return partial_metadata(obj, self.meta_version)
        if self.as_ == "Table":
            # Like the real server: column definitions with the first event only.
            rv = obj["metadata"]["resourceVersion"]
            table = self.handler._table(
                self.resource, [obj], self.meta_version, {"resourceVersion": rv}, self.query, self.first_table
            )
            self.first_table = False
            return table
        return obj


# -------------------------------------------------------------- control API


def _control_reply(handler, code, body):
    data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def control(handler, url):
    store = handler.store
    method, parts = handler.command, url.path.strip("/").split("/")[1:]
    raw = handler._read_body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        return 400, {"error": f"body is not JSON: {e}"}
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    try:
        if parts == ["objects"] and method == "POST":
            return 200, store.apply(body)
        if parts[:1] == ["objects"] and len(parts) == 4 and method == "DELETE":
            kind, namespace, name = (unquote(p) for p in parts[1:])
            grace = int(query.get("grace_seconds", "0"))
            obj = store.delete(kind, "" if namespace == "-" else namespace, name, grace)
            return (200, obj) if obj is not None else (404, {"error": f"no {kind} {namespace}/{name}"})
        if parts == ["outage"] and method == "POST":
            mode = body.get("mode", "close")
            if mode not in ("close", "503"):
                return 400, {"error": f"mode must be close or 503, not {mode!r}"}
            store.set_outage(mode if body.get("on") else None)
            return 200, {"outage": store.outage}
        if parts == ["compact"] and method == "POST":
            return 200, {"compactedResourceVersion": str(store.compact())}
        if parts == ["drop_watches"] and method == "POST":
            return 200, {"dropped": store.drop_watches()}
        if parts == ["requests"] and method == "GET":
            with store.cond:
                return 200, list(store.requests)
        if parts == ["requests"] and method == "DELETE":
            with store.cond:
                store.requests.clear()
            return 200, {}
        if parts == ["watches"] and method == "GET":
            with store.cond:
                counts = {r.plural: 0 for r in RESOURCES}
                for w in store.watches:
                    counts[w.resource.plural] += 1
            counts["total"] = sum(counts.values())
            return 200, counts
        if parts == ["state"] and method == "GET":
            with store.cond:
                return 200, {
                    "resourceVersion": str(store.rv),
                    "compactedResourceVersion": str(store.compacted_rv),
                    "outage": store.outage,
                }
    except ValueError as e:
        return 400, {"error": str(e)}
    return 404, {"error": f"no control endpoint {method} {url.path}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bookmark-seconds", type=float, default=5.0, help="interval of BOOKMARK events")
    parser.add_argument("--watch-timeout", type=int, default=300, help="watch length without timeoutSeconds")
    parser.add_argument("--history", type=int, default=10000, help="events kept for resuming watches")
    parser.add_argument("--state", help="unused; accepted for compatibility")
    args = parser.parse_args()
    Handler.store = Store(args.history)
    Handler.bookmark_seconds = args.bookmark_seconds
    Handler.watch_timeout = args.watch_timeout
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
