//! The cluster table: every cluster by name, each a [`LiveCluster`] whose
//! current snapshot is swapped atomically. Writers (set clusters, outcomes
//! that eject, health-check changes, time) build new snapshots off the pick
//! path. A by-name pick reads a per-thread cache of snapshots that one
//! relaxed load of the table's epoch validates (see [`LbTable::pick_with`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::cluster::{effective_health, ClusterAssignment, ClusterSnapshot, ClusterSpec};
use super::endpoint::Endpoint;
use super::failover::{self, LocalityFailover};
use super::outlier::{Detector, Outcome};
use super::rng::{mix64, Rng};
use super::state::EndpointState;
use crate::error::{Error, Result};

/// One cluster: its validated input, its endpoints' live state, the snapshot
/// serving now, and its outlier detector.
#[derive(Debug)]
pub struct LiveCluster {
    spec: Arc<ClusterSpec>,
    states: Arc<[Arc<EndpointState>]>,
    index: HashMap<SocketAddr, u32>,
    current: ArcSwap<ClusterSnapshot>,
    detector: Option<Mutex<Detector>>,
    seed: u64,
    rebuilds: AtomicU64,
    /// The table's epoch, bumped after each snapshot this cluster publishes.
    epoch: Arc<AtomicU64>,
}

/// A reader's hold on one cluster snapshot.
pub type ClusterGuard = Guard<Arc<ClusterSnapshot>>;

impl LiveCluster {
    fn new(
        spec: ClusterSpec,
        previous: Option<&LiveCluster>,
        now: u64,
        seed: u64,
        epoch: Arc<AtomicU64>,
    ) -> LiveCluster {
        let spec = Arc::new(spec);
        // Endpoints that stay (same address:port) keep their state: active
        // requests, counters, ejection.
        let states: Arc<[Arc<EndpointState>]> = spec
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .and_then(|p| p.index.get(&e.address).map(|&i| p.states[i as usize].clone()))
                    .unwrap_or_default()
            })
            .collect();
        let index = spec.endpoints.iter().enumerate().map(|(i, e)| (e.address, i as u32)).collect();
        let detector = spec.config.outlier.map(|cfg| {
            // A detector whose configuration is unchanged keeps its clock.
            match previous.and_then(|p| p.detector.as_ref()).map(|d| d.lock().unwrap_or_else(|e| e.into_inner())) {
                Some(d) if d.cfg == cfg => {
                    let mut nd = Detector::new(cfg, now, mix64(seed));
                    nd.clone_clock_from(&d);
                    Mutex::new(nd)
                }
                _ => Mutex::new(Detector::new(cfg, now, mix64(seed))),
            }
        });
        if spec.config.outlier.is_none() {
            // Without outlier detection nothing is ejected: clear any
            // ejection carried over from a config that had it.
            for s in states.iter().filter(|s| s.is_ejected()) {
                Detector::uneject(s, now);
            }
        }
        let snap = ClusterSnapshot::build(spec.clone(), states.clone(), seed);
        LiveCluster {
            spec,
            states,
            index,
            current: ArcSwap::from_pointee(snap),
            detector,
            seed,
            rebuilds: AtomicU64::new(0),
            epoch,
        }
    }

    /// The snapshot serving now (one atomic load).
    #[inline]
    pub fn snapshot(&self) -> ClusterGuard {
        self.current.load()
    }

    pub fn spec(&self) -> &Arc<ClusterSpec> {
        &self.spec
    }

    /// The endpoint index of `addr`.
    pub fn endpoint_index(&self, addr: &SocketAddr) -> Option<usize> {
        self.index.get(addr).map(|&i| i as usize)
    }

    pub fn state(&self, i: usize) -> &Arc<EndpointState> {
        &self.states[i]
    }

    /// How many times health changes rebuilt the snapshot.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Rebuilds the snapshot when effective health differs from the one serving.
    fn refresh(&self) {
        let cur = self.current.load();
        let stale = self
            .spec
            .endpoints
            .iter()
            .zip(self.states.iter())
            .enumerate()
            .any(|(i, (e, s))| cur.health(i) != effective_health(e, s));
        if stale {
            let n = self.rebuilds.fetch_add(1, Ordering::Relaxed) + 1;
            let snap = ClusterSnapshot::build(self.spec.clone(), self.states.clone(), mix64(self.seed ^ n));
            self.current.store(Arc::new(snap));
            // After the store: a by-name pick that sees the new epoch
            // reloads and finds this snapshot (see `LbTable::pick_with`).
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    /// Records an outcome for endpoint `i` (and, if `finished`, ends one
    /// active request). Returns whether health changed (a new snapshot).
    pub fn report(&self, i: usize, outcome: Outcome, finished: bool, now: u64) -> bool {
        if finished {
            self.states[i].request_finished();
        }
        let Some(d) = &self.detector else { return false };
        let changed = d.lock().unwrap_or_else(|e| e.into_inner()).report(&self.states, i, outcome, now);
        if changed {
            self.refresh();
        }
        changed
    }

    /// Advances time: runs a due outlier-detection sweep (returns ejected
    /// hosts whose time ran out). Returns whether health changed.
    pub fn tick(&self, now: u64) -> bool {
        let Some(d) = &self.detector else { return false };
        let changed = d.lock().unwrap_or_else(|e| e.into_inner()).sweep(&self.states, now);
        if changed {
            self.refresh();
        }
        changed
    }

    /// The caller's active health check result for endpoint `i`. A passing
    /// check also returns an ejected host early
    /// (`successful_active_health_check_uneject_host`, default true).
    pub fn set_health_check(&self, i: usize, healthy: bool, now: u64) {
        let s = &self.states[i];
        s.hc_failed.store(!healthy, Ordering::Release);
        if healthy && s.is_ejected() {
            if let Some(d) = &self.detector {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                if d.cfg.successful_active_health_check_uneject_host {
                    Detector::uneject(s, now);
                }
            }
        }
        self.refresh();
    }
}

/// A pick named a cluster the table does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCluster;

type ClusterMap = HashMap<String, Arc<LiveCluster>, NameHash>;

/// The cluster map's hasher: xxh3 of the name, seeded per table. SipHash
/// (std's default) was most of a by-name pick's time for short names; xxh3
/// hashes a short name in a few ns. The random per-table seed keeps the
/// collision resistance that matters here: names come from the control
/// plane, and an unknown seed means a config cannot be crafted to collide.
#[derive(Debug, Clone, Copy)]
struct NameHash(u64);

impl std::hash::BuildHasher for NameHash {
    type Hasher = NameHasher;

    #[inline]
    fn build_hasher(&self) -> NameHasher {
        NameHasher(self.0)
    }
}

/// `str`'s `Hash` writes the bytes then a 0xff terminator: the bytes go
/// through xxh3 with the running state as seed, other writes are mixed in.
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = self.0.rotate_left(8) ^ u64::from(i);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A thread's snapshots of one table, valid while the table's epoch is
/// `epoch`.
struct PickCache {
    /// The table's epoch counter: identifies the table (holding the `Arc`
    /// keeps its address from being reused by another table).
    table: Arc<AtomicU64>,
    epoch: u64,
    snapshots: HashMap<Box<str>, Arc<ClusterSnapshot>, NameHash>,
}

thread_local! {
    /// The snapshots this thread picked from by name, of the table it last
    /// used. Without it a by-name pick is two `ArcSwap` loads (map, then
    /// snapshot), each a pair of locked instructions to take and release a
    /// guard: ~20 of the ~34 ns the pick took. With it the pick is one
    /// relaxed load of the table's epoch, a hash lookup in this thread's
    /// own map, and the pick itself. Writers bump the epoch after every
    /// store a pick could see (a new cluster map, a snapshot rebuilt by a
    /// health change), so a pick that happens after a swap sees the new
    /// epoch, drops every cached snapshot and loads afresh. The cost: this
    /// thread keeps the snapshots it last used (and so removed clusters)
    /// alive until its next by-name pick.
    static PICK_CACHE: RefCell<Option<PickCache>> = const { RefCell::new(None) };
}

/// Every cluster by name, swapped as a whole.
#[derive(Debug)]
pub struct LbTable {
    clusters: Arc<ArcSwap<ClusterMap>>,
    writer: Mutex<()>,
    seed: u64,
    generation: AtomicU64,
    /// Bumped after every store a by-name pick could see (the map, any
    /// cluster's snapshot); shared with the clusters.
    epoch: Arc<AtomicU64>,
    name_hash: NameHash,
    failover: Option<LocalityFailover>,
}

impl LbTable {
    /// An empty table. `seed` fixes every random choice of snapshots built
    /// from it (round-robin starts, outlier enforcement); `failover` is the
    /// proxy's locality for Istio locality failover.
    pub fn new(seed: Option<u64>, failover: Option<LocalityFailover>) -> LbTable {
        let seed = seed.unwrap_or_else(|| Rng::from_entropy().next_u64());
        let name_hash = NameHash(mix64(seed ^ 0x6e61_6d65));
        LbTable {
            clusters: Arc::new(ArcSwap::from_pointee(HashMap::with_hasher(name_hash))),
            writer: Mutex::new(()),
            seed,
            generation: AtomicU64::new(0),
            epoch: Arc::new(AtomicU64::new(0)),
            name_hash,
            failover,
        }
    }

    /// Replaces the whole set of clusters (CDS state-of-the-world: a cluster
    /// not listed is removed). Endpoint state carries over for endpoints that
    /// stay. Returns the new generation. Specs are already validated, so
    /// this cannot fail; a parse error never reaches it, and the serving
    /// table stays as it was.
    pub fn set_clusters(&self, specs: Vec<ClusterSpec>, now: u64) -> u64 {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.clusters.load_full();
        let gen = self.generation.load(Ordering::Acquire) + 1;
        let mut map = HashMap::with_capacity_and_hasher(specs.len(), *old.hasher());
        for spec in specs {
            let prev = old.get(&spec.name).map(Arc::as_ref);
            let live = self.live(spec, prev, gen, now);
            map.insert(live.spec.name.clone(), live);
        }
        self.publish(map);
        self.generation.store(gen, Ordering::Release);
        gen
    }

    /// Adds or replaces some clusters, keeping the others (incremental CDS / EDS).
    pub fn upsert_clusters(&self, specs: Vec<ClusterSpec>, now: u64) -> u64 {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.clusters.load_full();
        let gen = self.generation.load(Ordering::Acquire) + 1;
        let mut map: ClusterMap = (*old).clone();
        for spec in specs {
            let prev = old.get(&spec.name).map(Arc::as_ref);
            let live = self.live(spec, prev, gen, now);
            map.insert(live.spec.name.clone(), live);
        }
        self.publish(map);
        self.generation.store(gen, Ordering::Release);
        gen
    }

    /// EDS: replaces the endpoints of clusters the table already has, each
    /// from its `ClusterLoadAssignment`, keeping the clusters' settings and
    /// the other clusters as they are. Endpoints that stay (same
    /// `address:port`) keep their live state. One swap publishes all of
    /// them. An assignment for a cluster the table does not have is an
    /// error naming it (Envoy ignores EDS for unknown clusters; here the
    /// caller learns of it), and then nothing changes. Returns the new
    /// generation.
    pub fn set_assignments(&self, assignments: Vec<ClusterAssignment>, now: u64) -> Result<u64> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.clusters.load_full();
        if let Some(a) = assignments.iter().find(|a| !old.contains_key(&a.cluster)) {
            return Err(Error::cluster(
                &a.cluster,
                "cluster_name",
                "no such cluster in the table (load the Cluster before its endpoints)",
            ));
        }
        let gen = self.generation.load(Ordering::Acquire) + 1;
        let mut map: ClusterMap = (*old).clone();
        for a in assignments {
            let prev = &old[&a.cluster];
            let live = self.live(prev.spec.with_assignment(a), Some(prev), gen, now);
            map.insert(live.spec.name.clone(), live);
        }
        self.publish(map);
        self.generation.store(gen, Ordering::Release);
        Ok(gen)
    }

    /// A cluster for `spec` in generation `gen`: Istio failover applied,
    /// live state taken over from `prev`.
    fn live(&self, mut spec: ClusterSpec, prev: Option<&LiveCluster>, gen: u64, now: u64) -> Arc<LiveCluster> {
        if let Some(f) = &self.failover {
            failover::apply(&mut spec, f);
        }
        let seed = mix64(self.seed ^ mix64(gen) ^ xxhash_rust::xxh64::xxh64(spec.name.as_bytes(), 0));
        Arc::new(LiveCluster::new(spec, prev, now, seed, self.epoch.clone()))
    }

    /// Removes clusters by name; returns how many existed.
    pub fn remove_clusters(&self, names: &[&str]) -> usize {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut map: ClusterMap = (*self.clusters.load_full()).clone();
        let n = names.iter().filter(|n| map.remove(**n).is_some()).count();
        self.publish(map);
        self.generation.fetch_add(1, Ordering::AcqRel);
        n
    }

    /// The cluster named `name`.
    #[inline]
    pub fn cluster(&self, name: &str) -> Option<Arc<LiveCluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// Stores a new cluster map, then bumps the epoch (in that order: a
    /// pick that sees the new epoch finds the new map).
    fn publish(&self, map: ClusterMap) {
        self.clusters.store(Arc::new(map));
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Picks an endpoint of `name`: `Ok(None)` when the cluster has no
    /// endpoint that may take the request ("no healthy upstream").
    #[inline]
    pub fn pick(&self, name: &str, hash: Option<u64>, rng: &mut Rng) -> Result<Option<SocketAddr>, UnknownCluster> {
        self.pick_with(name, hash, rng, |e| e.address)
    }

    /// Picks an endpoint of `name` and returns `f` of it, without cloning
    /// or allocating (the C ABI fills its caller's struct from it).
    ///
    /// Reads this thread's cache of the table's snapshots: valid while the
    /// table's epoch is unchanged, which one relaxed load checks. Ordering:
    /// writers store, then bump the epoch; a cache refill reads the epoch
    /// first, then the snapshot. A refill that races a swap therefore
    /// records the older epoch and refills again on the next pick; it never
    /// records a new epoch beside an old snapshot.
    #[inline]
    pub fn pick_with<T>(
        &self,
        name: &str,
        hash: Option<u64>,
        rng: &mut Rng,
        f: impl FnOnce(&Endpoint) -> T,
    ) -> Result<Option<T>, UnknownCluster> {
        let mut f = Some(f);
        let cached = PICK_CACHE.try_with(|cell| {
            // Not borrowable only if a pick re-entered (it cannot) or the
            // thread is exiting: then take the uncached path.
            let mut slot = cell.try_borrow_mut().ok()?;
            let epoch = self.epoch.load(Ordering::Acquire);
            let cache = match &mut *slot {
                Some(c) if Arc::ptr_eq(&c.table, &self.epoch) => c,
                s => s.insert(PickCache {
                    table: Arc::clone(&self.epoch),
                    epoch,
                    snapshots: HashMap::with_hasher(self.name_hash),
                }),
            };
            if cache.epoch != epoch {
                cache.snapshots.clear();
                cache.epoch = epoch;
            }
            let snap = match cache.snapshots.get(name) {
                Some(s) => s,
                None => {
                    let Some(c) = self.clusters.load().get(name).map(|c| c.current.load_full()) else {
                        return Some(Err(UnknownCluster));
                    };
                    cache.snapshots.entry(name.into()).or_insert(c)
                }
            };
            let f = f.take()?;
            Some(Ok(snap.pick(hash, rng).map(|i| f(&snap.endpoints()[i]))))
        });
        match (cached, f) {
            (Ok(Some(r)), _) => r,
            (_, Some(f)) => {
                let c = self.clusters.load().get(name).cloned().ok_or(UnknownCluster)?;
                let snap = c.current.load();
                Ok(snap.pick(hash, rng).map(|i| f(&snap.endpoints()[i])))
            }
            // `f` was taken only on the way to `Some(Ok(..))`.
            (_, None) => Err(UnknownCluster),
        }
    }

    /// Cluster names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.clusters.load().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.clusters.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs due outlier sweeps of every cluster; returns how many changed health.
    pub fn tick(&self, now: u64) -> usize {
        self.clusters.load().values().filter(|c| c.tick(now)).count()
    }
}
