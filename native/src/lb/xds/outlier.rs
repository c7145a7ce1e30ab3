//! Envoy's `OutlierDetection` (a cluster's `outlier_detection`) to an
//! [`OutlierConfig`], with Envoy's defaults and limits (envoy
//! `api/envoy/config/cluster/v3/outlier_detection.proto`).

use super::json::{boolean, duration_ms, uint, Ctx, Msg};
use crate::error::Result;
use crate::lb::config::OutlierConfig;

pub(super) fn outlier_detection(ctx: &Ctx<'_>, m: &Msg<'_>) -> Result<OutlierConfig> {
    const PCT: &[&str] = &[
        "enforcing_consecutive_5xx",
        "enforcing_consecutive_gateway_failure",
        "enforcing_consecutive_local_origin_failure",
        "enforcing_success_rate",
        "enforcing_failure_percentage",
        "max_ejection_percent",
        "failure_percentage_threshold",
    ];
    m.check(
        ctx,
        &[
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "consecutive_local_origin_failure",
            "split_external_local_origin_errors",
            "interval",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "always_eject_one_host",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "successful_active_health_check_uneject_host",
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_success_rate",
            "enforcing_failure_percentage",
            "max_ejection_percent",
            "failure_percentage_threshold",
        ],
        &[],
        &[
            ("enforcing_local_origin_success_rate", "local-origin success-rate ejection"),
            ("enforcing_failure_percentage_local_origin", "local-origin failure-percentage ejection"),
            ("detector", "outlier detector extensions"),
            ("monitors", "outlier detection monitors"),
        ],
    )?;
    let mut c = OutlierConfig::default();
    let u32f = |name: &str, slot: &mut u32, max: u64| -> Result<()> {
        if let Some(n) = uint(ctx, m, name, max)? {
            *slot = n as u32;
        }
        Ok(())
    };
    u32f("consecutive_5xx", &mut c.consecutive_5xx, u64::from(u32::MAX))?;
    u32f("consecutive_gateway_failure", &mut c.consecutive_gateway_failure, u64::from(u32::MAX))?;
    u32f("consecutive_local_origin_failure", &mut c.consecutive_local_origin_failure, u64::from(u32::MAX))?;
    u32f("success_rate_minimum_hosts", &mut c.success_rate_minimum_hosts, u64::from(u32::MAX))?;
    u32f("success_rate_request_volume", &mut c.success_rate_request_volume, u64::from(u32::MAX))?;
    u32f("success_rate_stdev_factor", &mut c.success_rate_stdev_factor, u64::from(u32::MAX))?;
    u32f("failure_percentage_minimum_hosts", &mut c.failure_percentage_minimum_hosts, u64::from(u32::MAX))?;
    u32f("failure_percentage_request_volume", &mut c.failure_percentage_request_volume, u64::from(u32::MAX))?;
    for &p in PCT {
        let slot = match p {
            "enforcing_consecutive_5xx" => &mut c.enforcing_consecutive_5xx,
            "enforcing_consecutive_gateway_failure" => &mut c.enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_local_origin_failure" => &mut c.enforcing_consecutive_local_origin_failure,
            "enforcing_success_rate" => &mut c.enforcing_success_rate,
            "enforcing_failure_percentage" => &mut c.enforcing_failure_percentage,
            "max_ejection_percent" => &mut c.max_ejection_percent,
            _ => &mut c.failure_percentage_threshold,
        };
        u32f(p, slot, 100)?;
    }
    c.split_external_local_origin_errors = boolean(ctx, m, "split_external_local_origin_errors")?;
    c.always_eject_one_host = boolean(ctx, m, "always_eject_one_host")?;
    if m.get("successful_active_health_check_uneject_host").is_some() {
        c.successful_active_health_check_uneject_host = boolean(ctx, m, "successful_active_health_check_uneject_host")?;
    }
    if let Some(ms) = duration_ms(ctx, m, "interval")? {
        if ms == 0 {
            return Err(ctx.err("outlier_detection.interval", "must be positive"));
        }
        c.interval_ms = ms;
    }
    let base_set = duration_ms(ctx, m, "base_ejection_time")?;
    if let Some(ms) = base_set {
        c.base_ejection_time_ms = ms;
    }
    if let Some(ms) = duration_ms(ctx, m, "max_ejection_time")? {
        c.max_ejection_time_ms = ms;
    } else if c.base_ejection_time_ms > c.max_ejection_time_ms {
        // Envoy: an unset max_ejection_time follows a larger base_ejection_time.
        c.max_ejection_time_ms = c.base_ejection_time_ms;
    }
    if c.max_ejection_time_ms < c.base_ejection_time_ms {
        return Err(ctx.err(
            "outlier_detection.max_ejection_time",
            format!("{} ms is shorter than base_ejection_time {} ms", c.max_ejection_time_ms, c.base_ejection_time_ms),
        ));
    }
    if let Some(ms) = duration_ms(ctx, m, "max_ejection_time_jitter")? {
        c.max_ejection_time_jitter_ms = ms;
    }
    Ok(c)
}
