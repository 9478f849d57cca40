//! Self-test of the Kubernetes API server stand-in and the pod cgroups the
//! tracer's Kubernetes metadata tests build on.
//!
//! Ground truth: the requests kube-rs 2.0.1 sends, byte for byte as its
//! `kube-core` request builder writes them (no `Accept` header for
//! `get`/`list`/`watch`; exactly
//! `application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` for
//! `get_metadata`; queries that start with `?&`, like `?&limit=500` and
//! `?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=N`),
//! real kubectl, and `/proc/PID/cgroup`.

use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tracer_e2e::cgroups::{cgroup_of, random_container_id, random_uid, PodCgroup, Qos};
use tracer_e2e::kube::{self, KubeApi};
use tracer_e2e::{privileged, wait_until, Guard, TestDir};

/// The `Accept` header of kube-rs's `Api::get_metadata`.
const METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
/// The `Accept` header of kube-rs's `Api::list_metadata`.
const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

fn json(response: &tracer_e2e::Response) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.body_text()))
}

fn rv_of(list: &Value) -> String {
    list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list has metadata.resourceVersion")
        .to_string()
}

/// A ReplicaSet-owned running pod on `node`.
fn web_pod(name: &str, node: &str, ip: &str, rs_uid: &str) -> (Value, String) {
    let uid = random_uid();
    let pod = kube::pod("shop", name, node, &uid, Some(ip))
        .label("app", "web")
        .owner("ReplicaSet", "web-7d9f8b6c5d", rs_uid)
        .container("app", &random_container_id())
        .build();
    (pod, uid)
}

#[test]
fn standin_answers_get_list_and_metadata_like_the_real_server() {
    let dir = TestDir::new("kube-standin-get");
    let api = KubeApi::start(&dir);
    let deploy_uid = random_uid();
    let rs_uid = random_uid();
    api.apply(&kube::deployment("shop", "web", &deploy_uid));
    api.apply(&kube::replicaset(
        "shop",
        "web-7d9f8b6c5d",
        &rs_uid,
        Some(("Deployment", "web", &deploy_uid)),
    ));
    let cid = random_container_id();
    let uid = random_uid();
    let stored = api.apply(
        &kube::pod("shop", "web-1", "node-a", &uid, Some("10.244.0.7"))
            .owner("ReplicaSet", "web-7d9f8b6c5d", &rs_uid)
            .container("app", &cid)
            .build(),
    );
    assert_eq!(stored["metadata"]["uid"], uid.as_str());
    api.apply(&web_pod("web-2", "node-b", "10.244.1.9", &rs_uid).0);

    // Api::get: the object with its kind.
    let got = api.get("/api/v1/namespaces/shop/pods/web-1", None);
    assert_eq!(got.status, 200, "{}", got.body_text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    let got = json(&got);
    assert_eq!(got["kind"], "Pod");
    assert_eq!(
        got["status"]["containerStatuses"][0]["containerID"],
        format!("containerd://{cid}").as_str()
    );
    assert_eq!(got["spec"]["nodeName"], "node-a");

    // Api::get_metadata: PartialObjectMetadata, owner references kept.
    let meta = json(&api.get(
        "/apis/apps/v1/namespaces/shop/replicasets/web-7d9f8b6c5d",
        Some(METADATA),
    ));
    assert_eq!(meta["kind"], "PartialObjectMetadata");
    assert_eq!(meta["apiVersion"], "meta.k8s.io/v1");
    assert!(meta.get("spec").is_none(), "{meta}");
    let owner = &meta["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["uid"], deploy_uid.as_str());
    assert_eq!(owner["controller"], true);
    let metas = json(&api.get("/apis/apps/v1/replicasets?&limit=500", Some(METADATA_LIST)));
    assert_eq!(metas["kind"], "PartialObjectMetadataList");
    assert_eq!(metas["items"][0]["kind"], "PartialObjectMetadata");

    // 404 with a Status body.
    let missing = api.get("/api/v1/namespaces/shop/pods/nope", None);
    assert_eq!(missing.status, 404);
    let status = json(&missing);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["message"], "pods \"nope\" not found");
    assert_eq!(status["code"], 404);

    // Pages: items without kind, a continue token, one resourceVersion.
    let page1 = json(&api.get("/api/v1/pods?limit=1", None));
    assert_eq!(page1["kind"], "PodList");
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(1));
    assert!(
        page1["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("a first page of two has a continue token");
    let page2 = json(&api.get(&format!("/api/v1/pods?limit=1&continue={token}"), None));
    assert_eq!(page2["items"][0]["metadata"]["name"], "web-2");
    assert!(page2["metadata"].get("continue").is_none());
    assert_eq!(rv_of(&page1), rv_of(&page2));

    // Field and label selectors, and the real server's 400 for an
    // unsupported field.
    let on_a = json(&api.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a", None));
    let names: Vec<&Value> = on_a["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["metadata"]["name"])
        .collect();
    assert_eq!(names, ["web-1"]);
    let labelled = json(&api.get("/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb", None));
    assert_eq!(labelled["items"][0]["metadata"]["name"], "web-2");
    let bad = api.get("/api/v1/pods?fieldSelector=spec.foo%3Dx", None);
    assert_eq!(bad.status, 400);
    assert_eq!(json(&bad)["message"], "field label not supported: spec.foo");

    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/replicasets/web-7d9f8b6c5d")
                && r.accept == METADATA
                && r.status == 200),
        "{requests:#?}"
    );
    api.clear_requests();
    assert!(api.requests().is_empty());
}

#[test]
fn standin_watches_expire_and_break_like_the_real_server() {
    let dir = TestDir::new("kube-standin-watch");
    let api = KubeApi::start(&dir);
    let rs_uid = random_uid();
    api.apply(&web_pod("web-1", "node-a", "10.244.0.7", &rs_uid).0);
    let list = json(&api.get("/api/v1/pods?&limit=500", None));
    let rv = rv_of(&list);

    // What kube-rs's watcher sends after its initial list.
    let watch_path = |rv: &str| {
        format!("/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}")
    };
    let mut watch = api.watch(&watch_path(&rv), None);
    assert!(
        wait_until(Duration::from_secs(5), || (api.open_watches()["pods"] == 1)
            .then_some(()))
        .is_some()
    );
    let (pod, _) = web_pod("web-2", "node-b", "10.244.1.9", &rs_uid);
    api.apply(&pod);
    let added = watch.next_change().expect("read").expect("an event");
    assert_eq!(added["type"], "ADDED");
    assert_eq!(
        added["object"]["kind"], "Pod",
        "watch objects carry their kind"
    );
    assert_eq!(added["object"]["metadata"]["name"], "web-2");
    // Bookmarks (every second here) carry the current resourceVersion.
    let bookmark = loop {
        let event = watch.next_event().expect("read").expect("an event");
        if event["type"] == "BOOKMARK" {
            break event;
        }
    };
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        added["object"]["metadata"]["resourceVersion"]
    );
    let final_object = api.delete("Pod", "shop", "web-2");
    let deleted = watch.next_change().expect("read").expect("an event");
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(
        deleted["object"]["metadata"]["resourceVersion"],
        final_object["metadata"]["resourceVersion"]
    );

    // Compaction ends the watch cleanly; resuming gets 410 Expired.
    let last_rv = deleted["object"]["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    api.compact();
    assert!(watch.next_change().expect("a clean end").is_none());
    let mut resumed = api.watch(&watch_path(&last_rv), None);
    let error = resumed.next_event().expect("read").expect("an event");
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(resumed.next_event().expect("a clean end").is_none());

    // drop_watches: a clean end, as at timeoutSeconds.
    let now = api.resource_version().to_string();
    let mut watch = api.watch(&watch_path(&now), None);
    assert!(
        wait_until(Duration::from_secs(5), || (api.open_watches()["total"]
            == 1)
            .then_some(()))
        .is_some()
    );
    assert_eq!(api.drop_watches(), 1);
    assert!(watch.next_change().expect("a clean end").is_none());

    // An outage cuts watches mid-stream and closes new connections.
    let mut watch = api.watch(&watch_path(&now), None);
    assert!(
        wait_until(Duration::from_secs(5), || (api.open_watches()["total"]
            == 1)
            .then_some(()))
        .is_some()
    );
    api.outage(true);
    let cut = watch.next_change().expect_err("an outage cuts the stream");
    assert_eq!(cut.kind(), ErrorKind::UnexpectedEof, "{cut}");
    assert!(api.try_get("/api/v1/pods", None).is_err());
    api.outage_503(true);
    assert_eq!(api.get("/api/v1/pods", None).status, 503);
    api.outage(false);
    assert_eq!(api.get("/api/v1/pods", None).status, 200);
    // The cut watch may be logged as unanswered too, depending on whether
    // its headers went out first: count the plain requests.
    let closed = api
        .requests()
        .iter()
        .filter(|r| r.status == 0 && !r.is_watch())
        .count();
    assert_eq!(closed, 1, "the request during the outage got no response");
}

#[test]
fn kubectl_sees_the_standin_cluster() {
    let dir = TestDir::new("kube-standin-kubectl");
    let api = KubeApi::start(&dir);
    let rs_uid = random_uid();
    let (pod, uid) = web_pod("web-1", "node-a", "10.244.0.7", &rs_uid);
    api.apply(&pod);
    api.apply(&kube::service("shop", "web", "10.96.0.10", 80));

    let out = api.kubectl(&["get", "pods", "-A", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl -o json prints JSON");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metadata"]["uid"], uid.as_str());

    // Server-side printing (Table), as `kubectl get -o wide` shows it.
    let out = api.kubectl(&["get", "pods", "-A", "-o", "wide"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("web-1"))
        .unwrap_or_else(|| panic!("no web-1 row:\n{text}"));
    for cell in ["shop", "1/1", "Running", "10.244.0.7", "node-a"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    let out = api.kubectl(&["get", "svc", "-A"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.96.0.10") && text.contains("80/TCP"),
        "{text}"
    );

    // A live watch.
    let mut cmd = api.kubectl_command(&["get", "pods", "-A", "-w", "--output-watch-events"]);
    let mut kubectl = Guard::spawn("kubectl-watch", &mut cmd, &dir);
    let shows = |kubectl: &mut Guard, what: &str| {
        wait_until(Duration::from_secs(20), || {
            kubectl.assert_running();
            kubectl.stdout().contains(what).then_some(())
        })
        .is_some()
    };
    assert!(shows(&mut kubectl, "web-1"), "{}", kubectl.stderr());
    api.apply(&web_pod("web-2", "node-b", "10.244.1.9", &rs_uid).0);
    assert!(shows(&mut kubectl, "web-2"), "{}", kubectl.stdout());
    api.delete("pod", "shop", "web-2");
    assert!(shows(&mut kubectl, "DELETED"), "{}", kubectl.stdout());
}

#[test]
fn pod_cgroup_holds_its_process_from_exec() {
    if !privileged("pod_cgroup_holds_its_process_from_exec") {
        return;
    }
    let uid = random_uid();
    let cid = random_container_id();
    let systemd = PodCgroup::systemd(&uid, &cid, Qos::Burstable);
    let want = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    assert_eq!(systemd.cgroup_path(), want);
    // The pod object that goes with it.
    let pod = kube::pod("shop", "web-1", "node-a", &uid, Some("10.244.0.7"))
        .container("app", &cid)
        .qos(Qos::Burstable)
        .build();
    assert_eq!(pod["status"]["qosClass"], "Burstable");

    // The program sees itself in the pod's cgroup from its first instruction.
    let out = systemd
        .spawn_in(
            Command::new("cat")
                .arg("/proc/self/cgroup")
                .stdout(Stdio::piped()),
        )
        .wait_with_output()
        .expect("wait for cat");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == format!("0::{want}")), "{text}");

    let mut sleeper = systemd.spawn_in(Command::new("sleep").arg("30"));
    assert_eq!(cgroup_of(sleeper.id()).as_deref(), Some(want.as_str()));
    assert_eq!(systemd.procs(), [sleeper.id()]);
    assert!(systemd.id() > 0);
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("wait sleep");

    // cgroupfs driver, Guaranteed (no QoS level), a process moved in later.
    let cgroupfs = PodCgroup::cgroupfs(&uid, &cid, Qos::Guaranteed);
    assert_eq!(cgroupfs.cgroup_path(), format!("/kubepods/pod{uid}/{cid}"));
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    cgroupfs.add(sleeper.id());

    // Dropping moves stragglers out and removes the directories.
    let (systemd_dir, cgroupfs_dir) = (systemd.path().to_path_buf(), cgroupfs.path().to_path_buf());
    drop(systemd);
    drop(cgroupfs);
    assert_eq!(cgroup_of(sleeper.id()).as_deref(), Some("/"));
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("wait sleep");
    assert!(!systemd_dir.exists() && !cgroupfs_dir.exists());
}
