//! Name table benchmarks: build time, lookup latency per query form (queries
//! spread over the whole table, so cold at scale, and a hot set of 1,000
//! names), batched lookups, lookup latency while tables are rebuilt and
//! swapped, and memory per entry.
//!
//! The table looks like a real mesh: `svc-{i}.ns-{i % 100}.svc.cluster.local`
//! Kubernetes services with one IPv4 address each (every 5th also IPv6), seen
//! from a proxy in `ns-0` with the usual Kubernetes search list.
//!
//! Full run: `cargo bench --bench names` (N = 1k, 100k, 1M).
//! Short run (CI, < 60 s): `PYMESH_BENCH_SHORT=1 cargo bench --bench names`
//! (N = 1k, 100k, small samples). `cargo test --benches` and
//! `cargo bench --bench names -- --test` run every benchmark once, also at
//! the short sizes.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pymesh_core::names::{Hit, LiveNameTable, NameConfig, NameEntry, NameTable, QueryName};

/// Namespaces the services are spread over, as in the generator's names.
const NAMESPACES: usize = 100;
/// Table size of the rebuild benchmark.
const REBUILD_N: usize = 100_000;
/// Names queried by `lookup_hit_hot`.
const HOT_SET: usize = 1_000;
/// Names per `lookup_batch` call in `lookup_hit_batch`.
const BATCH: usize = 64;

/// Short mode: the CI-sized run, or a run-once test run (`--test`, or no
/// `--bench` flag as under `cargo test --benches`, which is unoptimised).
fn short_mode() -> bool {
    let env = std::env::var("PYMESH_BENCH_SHORT").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let test_run = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    env || test_run
}

fn sizes() -> &'static [usize] {
    if short_mode() {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    }
}

fn config() -> NameConfig {
    NameConfig {
        namespace: "ns-0".into(),
        search: vec!["ns-0.svc.cluster.local".into(), "svc.cluster.local".into(), "cluster.local".into()],
        ..NameConfig::default()
    }
}

/// `n` services; `ip_base` varies the addresses between rebuilds.
fn entries(n: usize, ip_base: u8) -> Vec<NameEntry> {
    (0..n)
        .map(|i| {
            let ns = format!("ns-{}", i % NAMESPACES);
            let mut ips = vec![format!("{ip_base}.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)];
            if i % 5 == 0 {
                ips.push(format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff));
            }
            NameEntry::kubernetes(format!("svc-{i}.{ns}.svc.cluster.local"), format!("svc-{i}"), ns, ips)
        })
        .collect()
}

/// A fixed pseudo-random permutation of `0..n` (splitmix64-driven
/// Fisher-Yates), so lookups do not walk the table in insertion order.
fn permutation(n: usize) -> Vec<u32> {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Query names packed into one buffer, so the timed loop reads them without
/// chasing a pointer per name and the set costs ~40 bytes a name at 1M.
struct Queries {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Queries {
    fn new(order: &[u32], name: impl Fn(usize) -> String) -> Queries {
        let mut q = Queries { bytes: Vec::with_capacity(order.len() * 40), ends: Vec::with_capacity(order.len()) };
        for &i in order {
            q.bytes.extend_from_slice(name(i as usize).as_bytes());
            q.ends.push(q.bytes.len() as u32);
        }
        q
    }

    /// The `k`-th name, wrapping around.
    #[inline]
    fn get(&self, k: usize) -> &[u8] {
        let k = k % self.ends.len();
        let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
        &self.bytes[start..self.ends[k] as usize]
    }
}

/// A query name for service `i` of an `n`-service table.
type QueryFn = fn(usize, usize) -> String;

/// The query sets: benchmark name, query for service `i` of `n`, and whether
/// every such query hits (checked once before timing).
const QUERY_SETS: [(&str, QueryFn, bool); 4] = [
    ("lookup_hit", |i, _| format!("svc-{i}.ns-{}.svc.cluster.local", i % NAMESPACES), true),
    ("lookup_short_form", |i, _| format!("svc-{i}.ns-{}", i % NAMESPACES), true),
    ("lookup_search_expanded", |i, _| format!("svc-{i}.ns-{}.ns-0.svc.cluster.local", i % NAMESPACES), true),
    // Misses look like mesh names, so they go through every search-list
    // expansion before giving up: the slowest path a query can take.
    ("lookup_miss", |i, n| format!("svc-{}.ns-{}.svc.cluster.local", n + i, i % NAMESPACES), false),
];

/// What a DNS answer reads from a hit: the name and the addresses.
#[inline]
fn answer(hit: Option<Hit<'_>>) -> Option<(usize, Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    hit.map(|h| (h.canonical.len(), h.ipv4.first().copied(), h.ipv6.first().copied()))
}

fn report_memory(n: usize, table: &NameTable) {
    let (total, names) = table.heap_bytes();
    let per_entry = (total - names) as f64 / table.len() as f64;
    eprintln!(
        "names/memory/{n}: {total} heap bytes, {names} of them names; {per_entry:.1} bytes per entry beyond the names"
    );
}

fn bench_build(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("build");
    for &n in sizes() {
        let input = entries(n, 10);
        if n >= 100_000 {
            // A 1M build takes about a second; ten samples are plenty.
            group.sample_size(10);
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter(|| NameTable::build(black_box(input), &cfg).expect("valid table"))
        });
    }
    group.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let cfg = config();
    for &n in sizes() {
        let table = NameTable::build(&entries(n, 10), &cfg).expect("valid table");
        report_memory(n, &table);
        let order = permutation(n);
        for (bench, name, hit) in QUERY_SETS {
            let queries = Queries::new(&order, |i| name(i, n));
            for k in [0, n / 2, n - 1] {
                let q = QueryName::new(queries.get(k)).expect("valid query");
                assert_eq!(table.lookup(&q).is_some(), hit, "{bench}: {:?}", q);
            }
            let mut group = c.benchmark_group(bench);
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                let mut k = 0usize;
                b.iter(|| {
                    let q = QueryName::new(queries.get(k)).expect("valid query");
                    k += 1;
                    black_box(answer(table.lookup(black_box(&q))));
                })
            });
            group.finish();
        }
        // DNS traffic concentrates on few names: the same table, queried for
        // a hot set of 1,000 of its names (the first of the permutation, so
        // spread over the whole table), which then live in the CPU caches.
        // The cold `lookup_hit` above is the worst case, this the common one.
        let hot = Queries::new(&order[..HOT_SET.min(n)], |i| QUERY_SETS[0].1(i, n));
        let mut group = c.benchmark_group("lookup_hit_hot");
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut k = 0usize;
            b.iter(|| {
                let q = QueryName::new(hot.get(k)).expect("valid query");
                k += 1;
                black_box(answer(table.lookup(black_box(&q))));
            })
        });
        group.finish();
        // The many-names path (`lookup_many`): batches of BATCH queries of the
        // cold set, built and looked up together. Time is per batch; divide
        // by BATCH for a name (criterion's throughput shows names/s).
        let mut group = c.benchmark_group("lookup_hit_batch");
        group.throughput(Throughput::Elements(BATCH as u64));
        let cold = Queries::new(&order, |i| QUERY_SETS[0].1(i, n));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut k = 0usize;
            let mut batch = Vec::with_capacity(BATCH);
            b.iter(|| {
                batch.clear();
                for _ in 0..BATCH {
                    batch.push(QueryName::new(cold.get(k)).expect("valid query"));
                    k += 1;
                }
                table.lookup_batch(black_box(&batch), |_, hit| {
                    black_box(answer(hit));
                });
            })
        });
        group.finish();
    }
}

/// Lookups through [`LiveNameTable`] while another thread keeps building
/// 100k-name tables and swapping them in: the disruption a full xDS push
/// causes to queries in flight.
fn bench_lookup_during_rebuild(c: &mut Criterion) {
    let cfg = config();
    let live = Arc::new(LiveNameTable::new());
    live.store(Arc::new(NameTable::build(&entries(REBUILD_N, 10), &cfg).expect("valid table")));
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilder = {
        let (live, stop, cfg) = (live.clone(), stop.clone(), cfg.clone());
        // Two inputs with different addresses, so every swap changes answers.
        let inputs = [entries(REBUILD_N, 10), entries(REBUILD_N, 11)];
        std::thread::spawn(move || {
            let mut builds = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = NameTable::build(&inputs[builds % 2], &cfg).expect("valid table");
                live.store(Arc::new(t));
                builds += 1;
            }
            builds
        })
    };
    let queries = Queries::new(&permutation(REBUILD_N), |i| format!("svc-{i}.ns-{}.svc.cluster.local", i % NAMESPACES));
    let mut group = c.benchmark_group("lookup_during_rebuild");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter(REBUILD_N), |b| {
        let mut k = 0usize;
        b.iter(|| {
            let q = QueryName::new(queries.get(k)).expect("valid query");
            k += 1;
            let snap = live.load();
            let table = snap.as_ref().expect("a table is live");
            black_box(answer(table.lookup(black_box(&q))));
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let builds = rebuilder.join().expect("rebuild thread");
    eprintln!("lookup_during_rebuild/{REBUILD_N}: {builds} tables built and swapped in meanwhile");
}

fn criterion_config() -> Criterion {
    let c = Criterion::default();
    if short_mode() {
        c.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(1500))
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = bench_build, bench_lookup, bench_lookup_during_rebuild
}
criterion_main!(benches);
