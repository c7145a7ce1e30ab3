//! Priority levels: how the 100% of load is split over priorities and over
//! their healthy and degraded hosts, and when a priority is in panic.
//!
//! This is Envoy's arithmetic, integer for integer
//! (`LoadBalancerBase::recalculatePerPriorityState`, `distributeLoad`,
//! `recalculatePerPriorityPanic`, `recalculateLoadInTotalPanic` in
//! `source/extensions/load_balancing_policies/common/load_balancer_impl.cc`),
//! so a table's loads can be compared with Envoy's bit for bit. Envoy's docs
//! example: two priorities with health {20, 30} get loads {40, 60}.

/// Host counts of one priority level. Envoy also subtracts "excluded" hosts
/// (those waiting for a first health check); pymesh has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PriorityCounts {
    pub total: u32,
    pub healthy: u32,
    pub degraded: u32,
}

/// The computed loads. Every vector has one entry per priority; the healthy
/// and degraded loads always add up to exactly 100.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriorityLoad {
    /// `min(100, OPF * healthy / total)` per priority.
    pub health: Vec<u32>,
    /// The same for degraded hosts.
    pub degraded_availability: Vec<u32>,
    /// Percent of requests sent to each priority's healthy hosts.
    pub healthy: Vec<u32>,
    /// Percent of requests sent to each priority's degraded hosts.
    pub degraded: Vec<u32>,
    /// Priorities that balance over all their hosts, healthy or not.
    pub panic: Vec<bool>,
}

/// Fills `load` with `min(remaining, availability * 100 / nta)` level by level;
/// returns the first level with availability and what is left.
fn distribute(load: &mut [u32], availability: &[u32], mut total: u32, nta: u32) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, &a) in availability.iter().enumerate() {
        if first.is_none() && a > 0 {
            first = Some(i);
        }
        load[i] = total.min(a * 100 / nta);
        total -= load[i];
    }
    (first, total)
}

/// Computes priority loads and panic flags.
///
/// `opf` is the overprovisioning factor in percent (140 = 1.4), `panic_threshold`
/// a percentage (0 disables panic mode).
pub fn compute(counts: &[PriorityCounts], opf: u32, panic_threshold: u32) -> PriorityLoad {
    let n = counts.len().max(1);
    let mut out = PriorityLoad {
        health: vec![0; n],
        degraded_availability: vec![0; n],
        healthy: vec![0; n],
        degraded: vec![0; n],
        panic: vec![false; n],
    };
    for (i, c) in counts.iter().enumerate() {
        if c.total > 0 {
            // u64: the product cannot overflow even for 2^32 hosts.
            let t = u64::from(c.total);
            out.health[i] = (u64::from(opf) * u64::from(c.healthy) / t).min(100) as u32;
            out.degraded_availability[i] = (u64::from(opf) * u64::from(c.degraded) / t).min(100) as u32;
        }
    }
    let sum: u64 = out.health.iter().chain(&out.degraded_availability).map(|&v| u64::from(v)).sum();
    let nta = sum.min(100) as u32;
    if nta > 0 {
        let (first_healthy, left) = distribute(&mut out.healthy, &out.health, 100, nta);
        let (first_degraded, left) = distribute(&mut out.degraded, &out.degraded_availability, left, nta);
        // Rounding leftovers go to the first priority with healthy hosts,
        // else to the first with degraded ones.
        if left != 0 {
            match (first_healthy, first_degraded) {
                (Some(p), _) => out.healthy[p] += left,
                (None, Some(p)) => out.degraded[p] += left,
                (None, None) => unreachable!("nta > 0 means some availability"),
            }
        }
    }
    let threshold = panic_threshold.min(100);
    if threshold == 0 && nta == 0 {
        // Panic disabled and nothing available: Envoy sends 100% to P0, whose
        // healthy set is empty, so picks fail ("no healthy upstream").
        out.healthy.iter_mut().for_each(|v| *v = 0);
        out.degraded.iter_mut().for_each(|v| *v = 0);
        out.healthy[0] = 100;
        return out;
    }
    for (i, c) in counts.iter().enumerate() {
        // In panic when the cluster is not fully available and this level's
        // healthy + degraded share (without OPF) is below the threshold.
        out.panic[i] = nta != 100 && {
            let avail = u64::from(c.healthy) + u64::from(c.degraded);
            // 100 * avail / total < threshold, exactly (no floating point).
            c.total == 0 || 100 * avail < u64::from(threshold) * u64::from(c.total)
        };
    }
    if counts.is_empty() {
        out.panic[0] = nta != 100 && threshold > 0;
    }
    if out.panic.iter().all(|&p| p) {
        total_panic(counts, &mut out);
    }
    out
}

/// Every level in panic: split the load by host counts, healthy or not.
fn total_panic(counts: &[PriorityCounts], out: &mut PriorityLoad) {
    let total_hosts: u64 = counts.iter().map(|c| u64::from(c.total)).sum();
    out.degraded.iter_mut().for_each(|v| *v = 0);
    out.healthy.iter_mut().for_each(|v| *v = 0);
    if total_hosts == 0 {
        out.healthy[0] = 100;
        return;
    }
    let mut left = 100;
    let mut first = None;
    for (i, c) in counts.iter().enumerate() {
        if first.is_none() && c.total != 0 {
            first = Some(i);
        }
        let l = (100 * u64::from(c.total) / total_hosts) as u32;
        out.healthy[i] = l;
        left -= l;
    }
    out.healthy[first.unwrap_or(0)] += left;
}

/// Where a pick goes: a priority and which of its host sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Healthy,
    Degraded,
    /// All hosts of the priority (it is in panic).
    All,
}

/// The 100-entry answer to Envoy's `choosePriority(hash % 100 + 1)`: entry
/// `r` (0..100) is the (priority, source) a value `r` lands on, so a pick does
/// one array read instead of walking cumulative loads.
pub(crate) fn choice_table(load: &PriorityLoad) -> Box<[(u16, Source); 100]> {
    let mut t = Box::new([(0u16, Source::Healthy); 100]);
    for (r, slot) in t.iter_mut().enumerate() {
        let h = r as u32 + 1;
        let mut acc = 0;
        let mut found = None;
        for (p, &l) in load.healthy.iter().enumerate() {
            acc += l;
            if h <= acc {
                found = Some((p as u16, Source::Healthy));
                break;
            }
        }
        if found.is_none() {
            for (p, &l) in load.degraded.iter().enumerate() {
                acc += l;
                if h <= acc {
                    found = Some((p as u16, Source::Degraded));
                    break;
                }
            }
        }
        let (p, src) = found.unwrap_or((0, Source::Healthy));
        *slot = if load.panic[p as usize] { (p, Source::All) } else { (p, src) };
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u32, healthy: u32, degraded: u32) -> PriorityCounts {
        PriorityCounts { total, healthy, degraded }
    }

    #[test]
    fn docs_example_health_20_30_gives_40_60() {
        // 1 of 7 healthy: 140 * 1 / 7 = 20; 3 of 14: 140 * 3 / 14 = 30.
        let l = compute(&[c(7, 1, 0), c(14, 3, 0)], 140, 0);
        assert_eq!(l.health, vec![20, 30]);
        assert_eq!(l.healthy, vec![40, 60]);
        assert_eq!(l.degraded, vec![0, 0]);
    }

    #[test]
    fn docs_example_with_degraded_gets_rounding_to_first_healthy() {
        // Envoy's comment: health 10/20/10, degraded 20/10/0 give healthy
        // loads 16/28/14 and degraded 28/14/0.
        let l = compute(&[c(14, 1, 2), c(7, 1, 0), c(14, 1, 0)], 140, 0);
        assert_eq!(l.health, vec![10, 20, 10]);
        assert_eq!(l.degraded_availability, vec![20, 0, 0]);
        let l = compute(&[c(14, 1, 2), c(14, 2, 1), c(14, 1, 0)], 140, 0);
        assert_eq!((l.health.clone(), l.degraded_availability.clone()), (vec![10, 20, 10], vec![20, 10, 0]));
        assert_eq!(l.healthy, vec![16, 28, 14]);
        assert_eq!(l.degraded, vec![28, 14, 0]);
    }

    #[test]
    fn overprovisioning_keeps_full_load_until_71_percent() {
        assert_eq!(compute(&[c(100, 72, 0), c(10, 10, 0)], 140, 50).healthy, vec![100, 0]);
        assert_eq!(compute(&[c(100, 71, 0), c(10, 10, 0)], 140, 50).healthy, vec![99, 1]);
        assert_eq!(compute(&[c(2, 1, 0), c(10, 10, 0)], 140, 50).healthy, vec![70, 30]);
    }

    #[test]
    fn panic_and_total_panic() {
        // P0 20% healthy (< 50) is in panic; P1 at 50% is not; together
        // they are below 100% availability (28 + 70 = 98), so panic applies.
        let l = compute(&[c(10, 2, 0), c(10, 5, 0)], 140, 50);
        assert_eq!(l.panic, vec![true, false]);
        assert_eq!(l.healthy, vec![29, 71]);
        // The same P0 next to a fully available P1: no panic anywhere.
        let l = compute(&[c(10, 2, 0), c(10, 10, 0)], 140, 50);
        assert_eq!(l.panic, vec![false, false]);
        // Both below the threshold: split by host counts.
        let l = compute(&[c(10, 1, 0), c(30, 0, 0)], 140, 50);
        assert_eq!(l.panic, vec![true, true]);
        assert_eq!(l.healthy, vec![25, 75]);
        // Fully available clusters are never in panic.
        let l = compute(&[c(10, 3, 0), c(10, 10, 0)], 140, 50);
        assert_eq!(l.panic, vec![false, false]);
    }

    #[test]
    fn nothing_healthy_with_panic_disabled_goes_to_p0() {
        let l = compute(&[c(3, 0, 0), c(3, 0, 0)], 140, 0);
        assert_eq!((l.healthy, l.panic), (vec![100, 0], vec![false, false]));
    }

    #[test]
    fn choice_table_follows_cumulative_loads() {
        let l = compute(&[c(7, 1, 0), c(14, 3, 0)], 140, 0);
        let t = choice_table(&l);
        assert_eq!(t[0], (0, Source::Healthy));
        assert_eq!(t[39], (0, Source::Healthy));
        assert_eq!(t[40], (1, Source::Healthy));
        assert_eq!(t[99], (1, Source::Healthy));
    }
}
