//! `canaryd run --kubernetes`: list and watch the cluster's objects, translate them, apply
//! the routes like a reload, and write the statuses controllers wait for.
//!
//! Each kind has its own kube-rs watcher: list, then watch from the list's resourceVersion
//! with bookmarks; a 410 Gone (or a dropped stream) relists, with backoff on errors. Events
//! are batched: everything that arrived is applied, then the objects are translated once.
//! Nothing is translated until every kind has been listed once, so a route is never judged
//! against a half-read cluster (a Service not listed yet is not "not found").

use super::ingress;
use super::objects::EndpointSlice;
use super::status;
use super::translate::{self, Translation, World};
use crate::config::RouteConfig;
use crate::control::Control;
use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// What `--kubernetes` was started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ingresses of this class are served (`--ingress-class`, default `canaryd`).
    pub ingress_class: String,
}

/// The kinds watched, in the order of [`resource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    Service,
    EndpointSlice,
    Ingress,
}

const KINDS: [Kind; 6] = [
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Ingress,
];

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            Kind::GatewayClass => (
                super::objects::GATEWAY_GROUP,
                "v1",
                "GatewayClass",
                "gatewayclasses",
            ),
            Kind::Gateway => (super::objects::GATEWAY_GROUP, "v1", "Gateway", "gateways"),
            Kind::HttpRoute => (
                super::objects::GATEWAY_GROUP,
                "v1",
                "HTTPRoute",
                "httproutes",
            ),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Ingress => ("networking.k8s.io", "v1", "Ingress", "ingresses"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
        }
    }
}

/// The client every Kubernetes client would build: in-cluster service account, else
/// `KUBECONFIG` (or `~/.kube/config`).
pub async fn connect() -> anyhow::Result<Client> {
    Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "--kubernetes: cannot build a Kubernetes client (no in-cluster service account and no usable KUBECONFIG): {e}"
        )
    })
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn key_of(o: &DynamicObject) -> String {
    let name = o.metadata.name.clone().unwrap_or_default();
    match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// The objects as last seen, read into their types once, when they arrive (a batch
/// translates the world as it stands, without re-reading every object of the cluster).
#[derive(Default)]
struct Cache {
    world: World,
    /// The `status` of each Gateway API object as the API server sent it, to compare with
    /// what canaryd would write.
    statuses: [BTreeMap<String, Value>; 6],
    /// A relist in progress: objects listed so far, swapped in at `InitDone`.
    pending: [Option<Vec<DynamicObject>>; 6],
    listed: [bool; 6],
}

/// `obj` read as a `T`, or `None` (logged) when it does not read.
fn read<T: serde::de::DeserializeOwned>(kind: Kind, key: &str, obj: &DynamicObject) -> Option<T> {
    let parsed = serde_json::to_value(obj).and_then(serde_json::from_value::<T>);
    match parsed {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(kind = kind.name(), object = %key, "cannot read object, ignoring it: {e}");
            None
        }
    }
}

impl Cache {
    fn apply(&mut self, kind: Kind, event: Event<DynamicObject>) {
        let i = kind.index();
        match event {
            Event::Apply(o) => self.put(kind, &o),
            Event::Delete(o) => self.remove(kind, &key_of(&o)),
            Event::Init => self.pending[i] = Some(Vec::new()),
            Event::InitApply(o) => self.pending[i].get_or_insert_with(Vec::new).push(o),
            Event::InitDone => {
                if let Some(listed) = self.pending[i].take() {
                    self.clear(kind);
                    for o in &listed {
                        self.put(kind, o);
                    }
                }
                self.listed[i] = true;
            }
        }
    }

    fn put(&mut self, kind: Kind, o: &DynamicObject) {
        let key = key_of(o);
        self.remove(kind, &key);
        let w = &mut self.world;
        match kind {
            Kind::GatewayClass => read(kind, &key, o)
                .map(|t| w.classes.insert(key.clone(), t))
                .map(drop),
            Kind::Gateway => read(kind, &key, o)
                .map(|t| w.gateways.insert(key.clone(), t))
                .map(drop),
            Kind::HttpRoute => read(kind, &key, o)
                .map(|t| w.routes.insert(key.clone(), t))
                .map(drop),
            Kind::Service => read(kind, &key, o)
                .map(|t| w.services.insert(key.clone(), t))
                .map(drop),
            Kind::EndpointSlice => {
                read::<EndpointSlice>(kind, &key, o).map(|t| w.put_slice(key.clone(), t))
            }
            Kind::Ingress => read(kind, &key, o)
                .map(|t| w.ingresses.insert(key.clone(), t))
                .map(drop),
        };
        if let Some(status) = o.data.get("status") {
            self.statuses[kind.index()].insert(key, status.clone());
        }
    }

    fn remove(&mut self, kind: Kind, key: &str) {
        let w = &mut self.world;
        match kind {
            Kind::GatewayClass => drop(w.classes.remove(key)),
            Kind::Gateway => drop(w.gateways.remove(key)),
            Kind::HttpRoute => drop(w.routes.remove(key)),
            Kind::Service => drop(w.services.remove(key)),
            Kind::EndpointSlice => w.remove_slice(key),
            Kind::Ingress => drop(w.ingresses.remove(key)),
        }
        self.statuses[kind.index()].remove(key);
    }

    fn clear(&mut self, kind: Kind) {
        let w = &mut self.world;
        match kind {
            Kind::GatewayClass => w.classes.clear(),
            Kind::Gateway => w.gateways.clear(),
            Kind::HttpRoute => w.routes.clear(),
            Kind::Service => w.services.clear(),
            Kind::EndpointSlice => w.clear_slices(),
            Kind::Ingress => w.ingresses.clear(),
        }
        self.statuses[kind.index()].clear();
    }

    fn status_of(&self, kind: Kind, key: &str) -> Value {
        self.statuses[kind.index()]
            .get(key)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// Watch until the process ends.
pub async fn run(control: Arc<Control>, client: Client, opts: Options) {
    tracing::info!(
        controller = translate::CONTROLLER_NAME,
        ingress_class = %opts.ingress_class,
        "watching Kubernetes"
    );
    let (tx, mut rx) = mpsc::channel::<(Kind, Event<DynamicObject>)>(1024);
    for kind in KINDS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ev) => {
                        if tx.send((kind, ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(kind = kind.name(), "watch failed, retrying: {e}"),
                }
            }
        });
    }
    drop(tx);
    let mut cache = Cache::default();
    let mut last = Applied::default();
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some((kind, ev)) = ev else { return };
                cache.apply(kind, ev);
                while let Ok((kind, ev)) = rx.try_recv() {
                    cache.apply(kind, ev);
                }
            }
            _ = resync.tick() => {}
        }
        if cache.listed.iter().all(|l| *l) {
            sync(&control, &client, &opts, &cache, &mut last).await;
        }
    }
}

/// What was applied last, so an unchanged translation is not applied again.
#[derive(Default)]
struct Applied {
    fingerprint: Option<String>,
    good: BTreeMap<String, Vec<RouteConfig>>,
    /// What was last reported about each Ingress, so it is reported once per change.
    reported: BTreeMap<String, Vec<ingress::Problem>>,
}

async fn sync(
    control: &Control,
    client: &Client,
    opts: &Options,
    cache: &Cache,
    last: &mut Applied,
) {
    let world = &cache.world;
    let proxy = control.state().snapshot().config.proxy.clone();
    let file = control.file_routes();
    let t = translate::translate(world, &file, &proxy, &last.good);
    let taken: Vec<String> = file
        .iter()
        .chain(&t.routes)
        .map(|r| r.name.clone())
        .collect();
    let ing = ingress::translate(world, &opts.ingress_class, &file, &taken, &proxy);
    let mut routes = t.routes.clone();
    routes.extend(ing.routes);
    let fingerprint = format!("{routes:?}");
    if last.fingerprint.as_ref() != Some(&fingerprint) {
        let n = routes.len();
        match control.set_kube_routes(routes) {
            Ok(generation) => {
                tracing::info!(generation, routes = n, "Kubernetes routes applied");
                last.fingerprint = Some(fingerprint);
                last.good = t.good.clone();
            }
            Err(e) => tracing::warn!("Kubernetes routes rejected, keeping the last good ones: {e}"),
        }
    }
    write_statuses(client, cache, world, &t).await;
    for (key, problems) in &ing.problems {
        if last.reported.get(key) == Some(problems) {
            continue;
        }
        for p in problems {
            tracing::warn!(ingress = %key, reason = p.reason, "{}", p.message);
        }
        report(client, world, key, problems).await;
    }
    last.reported = ing.problems;
}

/// A Warning Event on the Ingress, for each problem canaryd found with it (what `kubectl
/// describe ingress` shows).
async fn report(client: &Client, world: &World, key: &str, problems: &[ingress::Problem]) {
    let Some(i) = world.ingresses.get(key) else {
        return;
    };
    let (ns, name) = (&i.metadata.namespace, &i.metadata.name);
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Event"), "events");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let now = now();
    for p in problems {
        let id = crate::hash::fnv(
            crate::hash::FNV_OFFSET,
            format!("{key}{}{now}", p.message).as_bytes().iter(),
        );
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{id:016x}"), "namespace": ns},
            "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                               "name": name, "namespace": ns},
            "type": "Warning",
            "reason": p.reason,
            "message": p.message,
            "source": {"component": "canaryd"},
            "reportingComponent": translate::CONTROLLER_NAME,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let Ok(obj) = serde_json::from_value::<DynamicObject>(event) else {
            continue;
        };
        if let Err(e) = api.create(&PostParams::default(), &obj).await {
            tracing::warn!(ingress = %key, "cannot record an Event: {e}");
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

async fn write_statuses(client: &Client, cache: &Cache, world: &World, t: &Translation) {
    let now = now();
    for (key, r) in &world.routes {
        let ours = t.route_status.get(key);
        if status::route(&cache.status_of(Kind::HttpRoute, key), ours, &now).is_none() {
            continue;
        }
        let generation = r.metadata.generation;
        write(client, Kind::HttpRoute, key, generation, |s| {
            status::route(s, ours, &now)
        })
        .await;
    }
    for (key, g) in &t.gateway_status {
        if status::gateway(&cache.status_of(Kind::Gateway, key), g, &now).is_none() {
            continue;
        }
        write(client, Kind::Gateway, key, g.generation, |s| {
            status::gateway(s, g, &now)
        })
        .await;
    }
    for (name, (generation, conds)) in &t.class_status {
        if status::class(
            &cache.status_of(Kind::GatewayClass, name),
            *generation,
            conds,
            &now,
        )
        .is_none()
        {
            continue;
        }
        write(client, Kind::GatewayClass, name, *generation, |s| {
            status::class(s, *generation, conds, &now)
        })
        .await;
    }
}

/// Read-modify-write of one object's status: read it, skip it if its spec moved on since
/// the translation (the next event recomputes it), compute the new status from what it
/// holds now, write it with the resourceVersion read; on a conflict, again (5 tries).
async fn write(
    client: &Client,
    kind: Kind,
    key: &str,
    generation: i64,
    new_status: impl Fn(&Value) -> Option<Value>,
) {
    let ar = kind.resource();
    let (api, name): (Api<DynamicObject>, &str) = match key.split_once('/') {
        Some((ns, name)) => (Api::namespaced_with(client.clone(), ns, &ar), name),
        None => (Api::all_with(client.clone(), &ar), key),
    };
    for _ in 0..5 {
        let mut obj = match api.get_status(name).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(kind = kind.name(), object = %key, "cannot read object for its status: {e}");
                return;
            }
        };
        if obj.metadata.generation.unwrap_or(0) > generation {
            return;
        }
        let current = obj.data.get("status").cloned().unwrap_or(Value::Null);
        let Some(next) = new_status(&current) else {
            return;
        };
        if let Some(m) = obj.data.as_object_mut() {
            m.insert("status".into(), next);
        }
        let body = match serde_json::to_vec(&obj) {
            Ok(b) => b,
            Err(_) => return,
        };
        match api.replace_status(name, &PostParams::default(), body).await {
            Ok(_) => {
                tracing::debug!(kind = kind.name(), object = %key, "status written");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                tracing::warn!(kind = kind.name(), object = %key, "cannot write status: {e}");
                return;
            }
        }
    }
    tracing::warn!(kind = kind.name(), object = %key, "status not written: 5 conflicts in a row");
}
